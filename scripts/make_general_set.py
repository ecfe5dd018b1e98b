"""Write wikitune/data/general.jsonl: the bundled general chat set mixed into every training
snapshot (everyday questions in Chinese and English, generated from checked facts and rules);
and wikitune/data/general_probes.jsonl: prompts of kinds the general set holds none of (word
meanings, translation, nature, science, short writing), in both languages, on which evaluation
compares each model's answers with the bare base model's (general agreement), so that learning
the general set's style cannot hide forgetting.

    .venv/bin/python scripts/make_general_set.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "wikitune" / "data"
OUT = DATA / "general.jsonl"
PROBES_OUT = DATA / "general_probes.jsonl"

DAYS_EN = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
DAYS_ZH = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
MONTHS = [
    ("January", "一月", 31),
    ("February", "二月", 0),
    ("March", "三月", 31),
    ("April", "四月", 30),
    ("May", "五月", 31),
    ("June", "六月", 30),
    ("July", "七月", 31),
    ("August", "八月", 31),
    ("September", "九月", 30),
    ("October", "十月", 31),
    ("November", "十一月", 30),
    ("December", "十二月", 31),
]
CAPITALS = [
    ("France", "法国", "Paris", "巴黎"),
    ("Japan", "日本", "Tokyo", "东京"),
    ("China", "中国", "Beijing", "北京"),
    ("Germany", "德国", "Berlin", "柏林"),
    ("Italy", "意大利", "Rome", "罗马"),
    ("Spain", "西班牙", "Madrid", "马德里"),
    ("the United Kingdom", "英国", "London", "伦敦"),
    ("Canada", "加拿大", "Ottawa", "渥太华"),
    ("Australia", "澳大利亚", "Canberra", "堪培拉"),
    ("Egypt", "埃及", "Cairo", "开罗"),
    ("India", "印度", "New Delhi", "新德里"),
    ("Russia", "俄罗斯", "Moscow", "莫斯科"),
    ("South Korea", "韩国", "Seoul", "首尔"),
    ("Thailand", "泰国", "Bangkok", "曼谷"),
    ("Vietnam", "越南", "Hanoi", "河内"),
    ("Turkey", "土耳其", "Ankara", "安卡拉"),
    ("Kenya", "肯尼亚", "Nairobi", "内罗毕"),
    ("Argentina", "阿根廷", "Buenos Aires", "布宜诺斯艾利斯"),
    ("Portugal", "葡萄牙", "Lisbon", "里斯本"),
    ("Greece", "希腊", "Athens", "雅典"),
]
ADVICE = [
    (
        "en",
        "How can I fall asleep more easily?",
        "Keep a regular bedtime, avoid screens and caffeine in the evening, and keep your bedroom dark and cool.",
    ),
    (
        "en",
        "How do I make a cup of tea?",
        "Boil water, pour it over a tea bag or leaves, steep for three to five minutes, then remove the tea.",
    ),
    (
        "en",
        "What should I do if I feel stressed?",
        "Take a short break, breathe slowly, go for a walk, and talk to someone you trust.",
    ),
    (
        "en",
        "How can I remember new words?",
        "Review them several times over a few days, use them in sentences, and test yourself.",
    ),
    (
        "en",
        "How do I write a polite email?",
        "Start with a greeting, state your purpose clearly, keep it short, and end with thanks and your name.",
    ),
    (
        "en",
        "Why should I drink water every day?",
        "Water keeps your body hydrated, helps regulate temperature, and supports digestion.",
    ),
    (
        "en",
        "How can I save money each month?",
        "Track your spending, set a budget, and move a fixed amount into savings when you are paid.",
    ),
    (
        "en",
        "What is a good way to start exercising?",
        "Begin with short walks or light workouts a few times a week and increase slowly.",
    ),
    (
        "en",
        "How do I keep a plant healthy?",
        "Give it the right amount of light, water it when the soil is dry, and use a pot that drains.",
    ),
    ("en", "Say hello in a friendly way.", "Hello! It's nice to meet you. How are you today?"),
    (
        "zh",
        "怎样才能更容易入睡？",
        "保持规律的作息，睡前少看屏幕、少喝咖啡，让卧室保持安静和昏暗。",
    ),
    ("zh", "怎么泡一杯茶？", "先把水烧开，倒在茶叶或茶包上，泡三到五分钟，然后把茶叶取出。"),
    (
        "zh",
        "感到压力大的时候该怎么办？",
        "可以先休息一下，慢慢深呼吸，出去散散步，或者和信任的人聊一聊。",
    ),
    ("zh", "怎样记住新单词？", "在几天内多次复习，用新单词造句，并且经常自我测验。"),
    ("zh", "怎么写一封礼貌的邮件？", "先问候对方，清楚说明来意，内容简洁，最后表示感谢并署名。"),
    ("zh", "为什么每天要喝水？", "喝水能让身体保持水分，帮助调节体温，也有助于消化。"),
    ("zh", "每个月怎样存钱？", "记录开销，制定预算，每次发工资时先把固定的一部分存起来。"),
    ("zh", "刚开始锻炼应该怎么做？", "可以从每周几次散步或轻量运动开始，然后慢慢增加强度。"),
    ("zh", "怎样养好一盆植物？", "给它合适的光照，土干了再浇水，并使用能排水的花盆。"),
    ("zh", "用友好的方式打个招呼。", "你好！很高兴认识你，今天过得怎么样？"),
]

# (category, language, prompt, a reference answer): no category here appears in rows().
PROBES = [
    ("opposites", "en", "What is the opposite of hot?", "The opposite of hot is cold."),
    ("opposites", "zh", "“热”的反义词是什么？", "“热”的反义词是“冷”。"),
    ("opposites", "en", "What is the opposite of up?", "The opposite of up is down."),
    ("opposites", "zh", "“上”的反义词是什么？", "“上”的反义词是“下”。"),
    (
        "synonyms",
        "en",
        "Give a word that means the same as happy.",
        "Glad means the same as happy.",
    ),
    ("synonyms", "zh", "“高兴”的近义词是什么？", "“高兴”的近义词是“快乐”。"),
    (
        "translation",
        "en",
        "How do you say thank you in Spanish?",
        "Thank you in Spanish is gracias.",
    ),
    ("translation", "zh", "“谢谢”用英语怎么说？", "“谢谢”用英语说是“thank you”。"),
    ("translation", "en", "What is the French word for cat?", "The French word for cat is chat."),
    ("translation", "zh", "“猫”用英语怎么说？", "“猫”用英语说是“cat”。"),
    ("nature", "en", "How many legs does a spider have?", "A spider has eight legs."),
    ("nature", "zh", "蜘蛛有几条腿？", "蜘蛛有八条腿。"),
    ("nature", "en", "What do bees make?", "Bees make honey."),
    ("nature", "zh", "蜜蜂会酿造什么？", "蜜蜂会酿造蜂蜜。"),
    ("nature", "en", "What color is the sky on a clear day?", "The sky is blue on a clear day."),
    ("nature", "zh", "晴天的天空是什么颜色？", "晴天的天空是蓝色的。"),
    (
        "science",
        "en",
        "At what temperature does water boil at sea level?",
        "Water boils at 100 degrees Celsius at sea level.",
    ),
    ("science", "zh", "在海平面上水在多少度沸腾？", "在海平面上水在100摄氏度沸腾。"),
    (
        "science",
        "en",
        "Which planet is closest to the Sun?",
        "Mercury is the planet closest to the Sun.",
    ),
    ("science", "zh", "离太阳最近的行星是哪一颗？", "离太阳最近的行星是水星。"),
    (
        "science",
        "en",
        "What gas do plants take in from the air?",
        "Plants take in carbon dioxide from the air.",
    ),
    ("science", "zh", "植物从空气中吸收什么气体？", "植物从空气中吸收二氧化碳。"),
    (
        "writing",
        "en",
        "Write one sentence about the sea.",
        "The sea stretches blue and calm to the horizon.",
    ),
    ("writing", "zh", "写一句关于大海的话。", "蔚蓝的大海一望无际。"),
    (
        "writing",
        "en",
        "Name three colors of the rainbow.",
        "Red, green and blue are colors of the rainbow.",
    ),
    ("writing", "zh", "说出彩虹的三种颜色。", "红色、绿色和蓝色都是彩虹的颜色。"),
    ("seasons", "en", "How many seasons are there in a year?", "There are four seasons in a year."),
    ("seasons", "zh", "一年有几个季节？", "一年有四个季节。"),
    ("seasons", "en", "Which season comes after winter?", "Spring comes after winter."),
    ("seasons", "zh", "冬天之后是什么季节？", "冬天之后是春天。"),
    (
        "comparison",
        "en",
        "Which is bigger, an elephant or a mouse?",
        "An elephant is bigger than a mouse.",
    ),
    ("comparison", "zh", "大象和老鼠哪个更大？", "大象比老鼠大。"),
]


def rows() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for a in range(3, 53):
        b = (a * 7) % 41 + 2
        out.append(("en", f"What is {a} + {b}?", f"{a} + {b} = {a + b}."))
        out.append(("zh", f"{a}加{b}等于多少？", f"{a}加{b}等于{a + b}。"))
    for a in range(2, 27):
        b = (a * 5) % 11 + 2
        out.append(("en", f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
        out.append(("zh", f"{a}乘以{b}等于多少？", f"{a}乘以{b}等于{a * b}。"))
    for i in range(7):
        nxt = (i + 1) % 7
        out.append(
            (
                "en",
                f"What day comes after {DAYS_EN[i]}?",
                f"{DAYS_EN[nxt]} comes after {DAYS_EN[i]}.",
            )
        )
        out.append(
            ("zh", f"{DAYS_ZH[i]}的后一天是星期几？", f"{DAYS_ZH[i]}的后一天是{DAYS_ZH[nxt]}。")
        )
    for en, zh, days in MONTHS:
        if days:
            out.append(("en", f"How many days are in {en}?", f"{en} has {days} days."))
            out.append(("zh", f"{zh}有多少天？", f"{zh}有{days}天。"))
        else:
            out.append(
                ("en", f"How many days are in {en}?", f"{en} has 28 days, or 29 in a leap year.")
            )
            out.append(("zh", f"{zh}有多少天？", f"{zh}平年有28天，闰年有29天。"))
    for n in range(1, 21):
        out.append(
            (
                "en",
                f"How many centimeters are in {n} meters?",
                f"{n} meters is {n * 100} centimeters.",
            )
        )
        out.append(("zh", f"{n}米等于多少厘米？", f"{n}米等于{n * 100}厘米。"))
    for n in range(1, 16):
        out.append(
            ("en", f"How many grams are in {n} kilograms?", f"{n} kilograms is {n * 1000} grams.")
        )
        out.append(("zh", f"{n}千克等于多少克？", f"{n}千克等于{n * 1000}克。"))
    for country_en, country_zh, city_en, city_zh in CAPITALS:
        out.append(
            (
                "en",
                f"What is the capital of {country_en}?",
                f"The capital of {country_en} is {city_en}.",
            )
        )
        out.append(("zh", f"{country_zh}的首都是哪里？", f"{country_zh}的首都是{city_zh}。"))
    out.extend(ADVICE)
    return out


def record(prefix: str, lang: str, question: str, answer: str, **extra: str) -> dict[str, object]:
    """One example; its id hashes the language and the question, so it is stable."""
    digest = hashlib.sha256(f"{lang}|{question}".encode()).hexdigest()[:12]
    return {
        "id": f"{prefix}-{digest}",
        **extra,
        "lang": lang,
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
    }


def write(path: Path, records: list[dict[str, object]], what: str) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {len(records)} {what} to {path}")


def main() -> None:
    write(OUT, [record("general", *row) for row in rows()], "examples")
    probes = [record("probe", lang, q, a, category=category) for category, lang, q, a in PROBES]
    write(PROBES_OUT, probes, "probes")


if __name__ == "__main__":
    main()
