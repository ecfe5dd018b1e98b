"""The DuckDB schema as an ordered list of migrations; a store applies the ones it lacks."""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

MIGRATIONS: list[str] = [
    # 1: sources, pages, the recent-changes cursor, seen rcids, failures, sync runs.
    """
    CREATE TABLE sources (
        name        VARCHAR PRIMARY KEY,
        spec        JSON NOT NULL,          -- the source settings, never the password
        created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
        updated_at  TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    CREATE TABLE pages (
        source        VARCHAR NOT NULL,
        pageid        BIGINT NOT NULL,      -- pages are keyed by pageid: a move keeps it
        ns            INTEGER NOT NULL,
        title         VARCHAR NOT NULL,
        revid         BIGINT,
        rev_timestamp VARCHAR,
        sha1          VARCHAR,
        wikitext      VARCHAR,
        categories    VARCHAR[] NOT NULL,
        in_scope      BOOLEAN NOT NULL,
        is_redirect   BOOLEAN NOT NULL,
        deleted       BOOLEAN NOT NULL,
        updated_at    TIMESTAMP NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (source, pageid)
    );
    CREATE TABLE sync_state (
        source              VARCHAR PRIMARY KEY,
        cursor_timestamp    VARCHAR,        -- last applied recent-changes row
        cursor_rcid         BIGINT,
        listed_through_rcid BIGINT,         -- rows up to here are covered by the last listing
        listing_timestamp   VARCHAR,        -- a full listing in progress started here
        listing_rcid        BIGINT,
        last_sync_at        TIMESTAMP
    );
    CREATE TABLE seen_changes (
        source    VARCHAR NOT NULL,
        rcid      BIGINT NOT NULL,
        timestamp VARCHAR NOT NULL,
        PRIMARY KEY (source, rcid)
    );
    CREATE TABLE page_failures (
        source     VARCHAR NOT NULL,
        pageid     BIGINT NOT NULL,
        title      VARCHAR NOT NULL,
        reason     VARCHAR NOT NULL,
        failed_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (source, pageid)
    );
    CREATE SEQUENCE sync_run_ids START 1;
    CREATE TABLE sync_runs (
        id          BIGINT PRIMARY KEY DEFAULT nextval('sync_run_ids'),
        source      VARCHAR NOT NULL,
        mode        VARCHAR NOT NULL,
        counts      JSON NOT NULL,
        requests    INTEGER NOT NULL,
        finished_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    """,
    # 2: QA pairs, page builds, dataset snapshots and the facts each snapshot held.
    """
    CREATE TABLE qa_pairs (
        source      VARCHAR NOT NULL,
        pair_id     VARCHAR NOT NULL,       -- hash of page, field, language and phrasing
        pageid      BIGINT NOT NULL,
        revid       BIGINT NOT NULL,        -- the revision the pair came from
        title       VARCHAR NOT NULL,
        field       VARCHAR NOT NULL,
        lang        VARCHAR NOT NULL,
        split       VARCHAR NOT NULL,       -- train or eval phrasing
        question    VARCHAR NOT NULL,
        answer      VARCHAR NOT NULL,
        fact_hash   VARCHAR NOT NULL,       -- page, field and value: what freshness compares
        created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
        changed_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
        retired_at  TIMESTAMP,
        PRIMARY KEY (source, pair_id)
    );
    CREATE TABLE page_builds (
        source   VARCHAR NOT NULL,
        pageid   BIGINT NOT NULL,
        revid    BIGINT NOT NULL,
        failure  VARCHAR,                   -- why the page could not be parsed, if it could not
        built_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
        PRIMARY KEY (source, pageid)
    );
    CREATE TABLE build_state (
        source         VARCHAR PRIMARY KEY,
        mapping_digest VARCHAR NOT NULL
    );
    CREATE TABLE snapshots (
        id          VARCHAR PRIMARY KEY,
        source      VARCHAR NOT NULL,
        digest      VARCHAR NOT NULL,
        counts      JSON NOT NULL,
        path        VARCHAR NOT NULL,
        created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
        trained_at  TIMESTAMP
    );
    CREATE TABLE snapshot_facts (
        snapshot_id VARCHAR NOT NULL,
        fact_hash   VARCHAR NOT NULL,
        PRIMARY KEY (snapshot_id, fact_hash)
    );
    """,
    # 3: values and leads the quality gate refused, per page, as of the page's last build; the
    # wiki's content namespaces, which a category scope follows.
    """
    CREATE TABLE value_rejections (
        source  VARCHAR NOT NULL,
        pageid  BIGINT NOT NULL,
        title   VARCHAR NOT NULL,
        field   VARCHAR NOT NULL,
        reason  VARCHAR NOT NULL,           -- markup, entity, empty, too long, not prose
        value   VARCHAR NOT NULL,           -- the refused text, cut to 120 characters
        PRIMARY KEY (source, pageid, field)
    );
    CREATE TABLE site_namespaces (
        source              VARCHAR PRIMARY KEY,
        content_namespaces  INTEGER[] NOT NULL,  -- from meta=siteinfo
        fetched_at          TIMESTAMP NOT NULL DEFAULT current_timestamp
    );
    """,
    # 4: the snapshot the champion was trained on, which freshness is measured against; a
    # snapshot that was trained on but lost keeps its changes due. Until a cycle reads the
    # registry, the last trained snapshot stands in for the champion's.
    """
    ALTER TABLE snapshots ADD COLUMN champion_at TIMESTAMP;
    UPDATE snapshots SET champion_at = trained_at;
    """,
    # 5: each snapshot's answers to its eval questions, so that a later snapshot knows what a
    # changed fact's question was answered with before (the stale rate).
    """
    CREATE TABLE snapshot_answers (
        snapshot_id VARCHAR NOT NULL,
        pair_id     VARCHAR NOT NULL,
        answer      VARCHAR NOT NULL,
        PRIMARY KEY (snapshot_id, pair_id)
    );
    """,
    # 6: which pages each sync changed and how, so that reports name pages and count each
    # page once however many syncs touched it.
    """
    CREATE TABLE sync_run_pages (
        run_id  BIGINT NOT NULL,            -- sync_runs.id
        pageid  BIGINT NOT NULL,
        title   VARCHAR NOT NULL,           -- the title the change left
        kind    VARCHAR NOT NULL,           -- new, edited, moved, deleted, restored, ...
        revid   BIGINT
    );
    """,
    # 7: the values each pair states (every item of a list), so that evaluation scores the
    # fact rather than the sentence; and the values a snapshot's eval questions were answered
    # with, so that a later snapshot knows a changed fact's previous value. Pairs built before
    # get theirs at the next build: every page is parsed again.
    """
    ALTER TABLE qa_pairs ADD COLUMN fact_values VARCHAR[];
    ALTER TABLE snapshot_answers ADD COLUMN fact_values VARCHAR[];
    UPDATE build_state SET mapping_digest = '';
    """,
]
