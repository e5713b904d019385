"""The simulator's seeded market and demo accounts: realistic KRX stocks, Korean names, plausible prices."""

from __future__ import annotations

import hashlib

# code -> (name, previous close in KRW)
SEEDED_STOCKS: dict[str, tuple[str, int]] = {
    "005930": ("삼성전자", 72_000),
    "000660": ("SK하이닉스", 182_000),
    "035420": ("NAVER", 198_500),
    "035720": ("카카오", 41_250),
    "005380": ("현대차", 245_000),
    "051910": ("LG화학", 318_000),
    "006400": ("삼성SDI", 286_500),
    "068270": ("셀트리온", 178_300),
    "105560": ("KB금융", 81_600),
    "055550": ("신한지주", 52_300),
    "000270": ("기아", 97_800),
    "012330": ("현대모비스", 236_000),
    "207940": ("삼성바이오로직스", 1_012_000),
    "373220": ("LG에너지솔루션", 368_500),
    "005490": ("POSCO홀딩스", 312_500),
    "028260": ("삼성물산", 142_800),
    "066570": ("LG전자", 88_400),
    "003550": ("LG", 76_900),
    "017670": ("SK텔레콤", 53_700),
    "030200": ("KT", 41_950),
    "015760": ("한국전력", 21_450),
    "034730": ("SK", 138_600),
    "096770": ("SK이노베이션", 104_300),
    "086790": ("하나금융지주", 61_200),
    "032830": ("삼성생명", 86_100),
    "033780": ("KT&G", 101_200),
    "009150": ("삼성전기", 142_900),
    "010130": ("고려아연", 512_000),
    "011200": ("HMM", 18_740),
    "003670": ("포스코퓨처엠", 214_500),
    "047050": ("포스코인터내셔널", 48_350),
    "259960": ("크래프톤", 312_000),
    "036570": ("엔씨소프트", 187_400),
    "251270": ("넷마블", 49_850),
    "352820": ("하이브", 214_000),
    "090430": ("아모레퍼시픽", 128_700),
    "097950": ("CJ제일제당", 268_000),
    "024110": ("기업은행", 14_230),
    "316140": ("우리금융지주", 16_870),
    "042700": ("한미반도체", 98_700),
}

DEFAULT_PAPER_CASH = 500_000_000  # KIS paper accounts start with 5억 원

# cano -> seeded account; holdings are (code, quantity, average purchase price)
SEEDED_ACCOUNTS: dict[str, dict] = {
    "50123456": {
        "hts_id": "sim50123456",
        "cash": DEFAULT_PAPER_CASH,
        "holdings": [
            ("005930", 10, 71_250.5),
            ("000660", 5, 175_400.0),
            ("035420", 3, 205_000.0),
            ("035720", 20, 43_100.0),
            ("005380", 2, 238_500.0),
        ],
    },
    "50123457": {
        "hts_id": "sim50123457",
        "cash": DEFAULT_PAPER_CASH,
        "holdings": [
            ("051910", 4, 331_000.0),
            ("006400", 6, 279_000.0),
            ("068270", 12, 171_650.0),
            ("105560", 30, 78_900.0),
        ],
    },
    "50123458": {"hts_id": "sim50123458", "cash": DEFAULT_PAPER_CASH, "holdings": []},
}

_NAME_HEADS = ("한국", "대한", "동양", "미래", "신성", "삼화", "세진", "우리", "태평", "금강", "청담", "한빛")
_NAME_TAILS = (
    "전자",
    "화학",
    "제약",
    "건설",
    "바이오",
    "에너지",
    "식품",
    "통신",
    "기계",
    "금융",
    "소재",
    "로보틱스",
)


def generated_stock(code: str) -> tuple[str, int]:
    """A stable name and previous close for a code that was not seeded (the same code, the same stock)."""
    digest = hashlib.sha256(code.encode()).digest()
    name = f"{_NAME_HEADS[digest[0] % len(_NAME_HEADS)]}{_NAME_TAILS[digest[1] % len(_NAME_TAILS)]}"
    raw_price = 1_000 + int.from_bytes(digest[2:6], "big") % 299_000
    return name, round_to_tick(raw_price)


def tick_size(price: float) -> int:
    """KRX price unit (호가단위) for stocks since 2023."""
    for bound, unit in ((2_000, 1), (5_000, 5), (20_000, 10), (50_000, 50), (200_000, 100), (500_000, 500)):
        if price < bound:
            return unit
    return 1_000


def round_to_tick(price: float) -> int:
    unit = tick_size(price)
    return max(unit, round(price / unit) * unit)
