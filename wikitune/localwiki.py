"""A real MediaWiki on 127.0.0.1 from Debian's ``mediawiki`` package, for tests, benchmarks and
the demo: its own SQLite data directory, served by ``php -S``, with an admin and a bot password.

Needs the Debian packages ``mediawiki php-cli php-sqlite3 php-intl php-mbstring php-xml``.
Writes go through :class:`wikitune.tasks.mediawiki.MediaWikiClient`, so this module speaks no
HTTP of its own.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from wikitune.tasks.mediawiki import ApiError, MediaWikiClient

__all__ = ["MEDIAWIKI_ROOT", "LocalWiki", "mediawiki_installed"]

MEDIAWIKI_ROOT = Path("/usr/share/mediawiki")
ADMIN = "Admin"
BOT_APP = "wikitune"

TEST_SETTINGS = """
# Added by wikitune.localwiki: a quiet wiki for tests.
$wgRateLimits = [];
$wgPasswordAttemptThrottle = false;
$wgAccountCreationThrottle = false;
$wgRCMaxAge = {rc_max_age};
$wgJobRunRate = 0;
$wgEnableUploads = false;
$wgGroupPermissions['*']['edit'] = false;
"""


def mediawiki_installed() -> bool:
    """Whether Debian's mediawiki package and the php CLI are on this machine."""
    return (MEDIAWIKI_ROOT / "maintenance" / "install.php").exists() and bool(shutil.which("php"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LocalWiki:
    """A throwaway MediaWiki instance in ``data_dir``.

    Examples:
        >>> wiki = LocalWiki(tmp_path).start()
        >>> wiki.edit("Alice", "Hello [[Category:VTuber]]")
        >>> wiki.stop()
    """

    def __init__(
        self, data_dir: Path, *, rc_max_age: int = 10 * 365 * 86400, extra_settings: str = ""
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.rc_max_age = rc_max_age
        self.extra_settings = extra_settings
        self.port = free_port()
        self.admin_password = "adminpass-" + secrets.token_hex(8)
        self.bot_password = SecretStr(secrets.token_hex(16))  # MediaWiki wants [0-9a-w]{32,}
        self.bot_user = f"{ADMIN}@{BOT_APP}"
        self._server: subprocess.Popen[bytes] | None = None
        self._admin: MediaWikiClient | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api.php"

    @property
    def settings_file(self) -> Path:
        return self.data_dir / "LocalSettings.php"

    def _php(self, script: str, *args: str, check: bool = True) -> str:
        env = {"MW_CONFIG_FILE": str(self.settings_file), "PATH": "/usr/bin:/bin"}
        result = subprocess.run(
            ["php", str(MEDIAWIKI_ROOT / "maintenance" / script), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=MEDIAWIKI_ROOT,
            timeout=300,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{script} failed ({result.returncode}): {result.stderr[-2000:]}")
        return result.stdout

    def install(self) -> LocalWiki:
        """Create the SQLite wiki, its admin and a bot password with the grants tests need."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.settings_file.exists():
            self._php(
                "install.php",
                "--dbtype=sqlite",
                f"--dbpath={self.data_dir}",
                "--dbname=wiki",
                f"--confpath={self.data_dir}",
                f"--server=http://127.0.0.1:{self.port}",
                "--scriptpath=",
                f"--pass={self.admin_password}",
                "--lang=en",
                "--skins=",
                "wikitune-test",
                ADMIN,
            )
            with self.settings_file.open("a") as settings:
                settings.write(TEST_SETTINGS.format(rc_max_age=self.rc_max_age))
                settings.write(self.extra_settings)
            self._php(
                "createBotPassword.php",
                "--appid",
                BOT_APP,
                "--grants",
                "basic,highvolume,editpage,createeditmovepage,delete,editprotected",
                ADMIN,
                self.bot_password.get_secret_value(),
            )
        return self

    def start(self) -> LocalWiki:
        """Install when needed and serve the wiki with ``php -S``; waits until api.php answers."""
        self.install()
        env = {"MW_CONFIG_FILE": str(self.settings_file), "PATH": "/usr/bin:/bin"}
        log = (self.data_dir / "php-server.log").open("ab")
        serve = ["php", "-S", f"127.0.0.1:{self.port}", "-t", str(MEDIAWIKI_ROOT)]
        if shutil.which("setpriv"):
            # The server ends with this process, even one killed with SIGKILL (util-linux).
            serve = ["setpriv", "--pdeathsig", "TERM", *serve]
        self._server = subprocess.Popen(
            serve,
            cwd=MEDIAWIKI_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        probe = self.client(retries=0)
        while True:
            try:
                probe.get(action="query", meta="siteinfo")
                return self
            except ApiError:
                return self  # it answers, though perhaps not to anonymous readers
            except Exception:
                if self._server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"MediaWiki did not start on {self.api_url}; see {log.name}"
                    ) from None
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the php server."""
        if self._server is not None:
            self._server.terminate()
            self._server.wait(timeout=10)
            self._server = None

    def __enter__(self) -> LocalWiki:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, **options: Any) -> MediaWikiClient:
        """A fresh anonymous client for this wiki."""
        options.setdefault("backoff_seconds", 0.1)
        return MediaWikiClient(self.api_url, user_agent="wikitune-localwiki/0 (tests)", **options)

    # -- writes, as the admin's bot password -------------------------------------------------

    @property
    def admin(self) -> MediaWikiClient:
        if self._admin is None:
            self._admin = self.client()
            self._admin.login(self.bot_user, self.bot_password)
        return self._admin

    def _write(self, **params: Any) -> dict[str, Any]:
        return self.admin.post(token=self.admin.csrf_token(), **params)

    def edit(self, title: str, text: str, summary: str = "wikitune test edit") -> int:
        """Create or replace a page; returns the new revid (or the old one for a null edit)."""
        result = self._write(action="edit", title=title, text=text, summary=summary, bot=1)
        return int(result["edit"].get("newrevid") or result["edit"].get("pageid"))

    def move(self, source: str, target: str, *, leave_redirect: bool = True) -> None:
        params: dict[str, Any] = {"action": "move", "from": source, "to": target}
        if not leave_redirect:
            params["noredirect"] = 1
        self._write(**params)

    def delete(self, title: str) -> None:
        self._write(action="delete", title=title)

    def undelete(self, title: str) -> None:
        self._write(action="undelete", title=title)

    def run_jobs(self) -> None:
        """Run the job queue (api.php never does): links updates, categorize rows, rc purges."""
        self._php("runJobs.php", "--quiet")

    def import_pages(self, pages: dict[str, str]) -> None:
        """Create many pages quickly from an XML dump (no recent-changes rows are written)."""
        from xml.sax.saxutils import escape

        dump = self.data_dir / "import.xml"
        with dump.open("w", encoding="utf-8") as out:
            out.write(
                '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">\n'
            )
            for title, text in pages.items():
                out.write(
                    f"<page><title>{escape(title)}</title><ns>0</ns><revision>"
                    "<timestamp>2026-01-01T00:00:00Z</timestamp>"
                    "<contributor><username>Admin</username></contributor>"
                    "<model>wikitext</model><format>text/x-wiki</format>"
                    f'<text xml:space="preserve">{escape(text)}</text></revision></page>\n'
                )
            out.write("</mediawiki>\n")
        self._php("importDump.php", "--quiet", str(dump))
        self.run_jobs()
