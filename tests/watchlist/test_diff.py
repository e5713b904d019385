from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from trading.brokers.base import balance_frame
from watchlist.diff import ItemState, WatchlistDiff, diff_items, holdings_from_balance


def item(
    code: str,
    quantity: int = 10,
    avg_price: float = 70_000.0,
    current_price: int = 72_000,
    pending: bool = False,
) -> ItemState:
    return ItemState(code, f"종목{code}", quantity, avg_price, current_price, 0, 0, 0.0, pending).revalued()


def as_map(*items: ItemState) -> dict[str, ItemState]:
    return {state.stock_code: state for state in items}


def test_a_new_code_is_added():
    changes = diff_items(as_map(item("005930")), as_map(item("005930"), item("000660")))
    assert changes == WatchlistDiff(added=("000660",))
    assert changes.as_dict() == {"added": ["000660"], "removed": [], "updated": []}


def test_a_code_no_longer_held_is_removed():
    assert diff_items(as_map(item("005930"), item("000660")), as_map(item("005930"))) == WatchlistDiff(
        removed=("000660",)
    )


def test_quantity_average_price_or_pending_is_an_update():
    stored = item("005930")
    for changed in (
        replace(stored, quantity=4),
        replace(stored, avg_price=70_500.5),
        replace(stored, pending=True),
    ):
        assert diff_items(as_map(stored), as_map(changed)) == WatchlistDiff(updated=("005930",))


def test_a_price_move_alone_is_no_change_but_is_reported_for_refresh():
    stored = item("005930", current_price=72_000)
    moved = stored.revalued(current_price=73_100)
    changes = diff_items(as_map(stored), as_map(moved))
    assert not changes
    assert changes.repriced == ("005930",)
    assert changes.as_dict() == {"added": [], "removed": [], "updated": []}


def test_identical_lists_give_an_empty_diff():
    same = as_map(item("005930"), item("000660"))
    changes = diff_items(same, dict(same))
    assert not changes and changes == WatchlistDiff()


def test_codes_come_sorted():
    changes = diff_items({}, as_map(item("035720"), item("000660"), item("005930")))
    assert changes.added == ("000660", "005930", "035720")


def test_holdings_are_the_balance_rows_with_quantity_above_zero():
    frame = balance_frame(
        [
            {
                "stock_code": "005930",
                "name": "삼성전자",
                "quantity": 10,
                "orderable_quantity": 10,
                "avg_price": 71250.5,
                "current_price": 72100,
                "eval_amount": 721000,
                "pnl": 8495,
                "pnl_rate": 1.19,
            },
            {
                "stock_code": "000660",
                "name": "SK하이닉스",
                "quantity": 0,
                "orderable_quantity": 0,
                "avg_price": 0.0,
                "current_price": 180000,
                "eval_amount": 0,
                "pnl": 0,
                "pnl_rate": 0.0,
            },
        ]
    )
    holdings = holdings_from_balance(frame)
    assert list(holdings) == ["005930"]
    assert holdings["005930"] == ItemState("005930", "삼성전자", 10, 71250.5, 72100, 721000, 8495, 1.19)


def test_revalued_recomputes_evaluation_and_pnl():
    state = item("005930", quantity=10, avg_price=70_000.0).revalued(current_price=77_000)
    assert (state.eval_amount, state.pnl, state.pnl_rate) == (770_000, 70_000, 10.0)


# --- property: the diff describes exactly the difference --------------------------------------------

codes = st.sampled_from([f"{n:06d}" for n in range(12)])
states = st.builds(
    item,
    codes,
    quantity=st.integers(1, 5),
    avg_price=st.sampled_from([100.0, 150.5]),
    current_price=st.integers(90, 110),
    pending=st.booleans(),
)
watchlists = st.lists(states, max_size=12).map(lambda items: as_map(*items))


def apply_diff(stored: dict[str, ItemState], changes: WatchlistDiff, target: dict[str, ItemState]) -> dict:
    """What a client does with a change (plus the price refresh): only the named codes move."""
    result = {code: state for code, state in stored.items() if code not in changes.removed}
    for code in changes.added + changes.updated + changes.repriced:
        result[code] = target[code]
    return result


@given(watchlists, watchlists)
def test_applying_the_diff_to_the_old_list_gives_the_new_one(stored, target):
    changes = diff_items(stored, target)
    assert apply_diff(stored, changes, target) == target
    assert set(changes.added).isdisjoint(changes.removed)


@given(watchlists, st.data())
def test_the_diff_is_empty_exactly_when_nothing_but_prices_changed(stored, data):
    target = {
        code: state.revalued(current_price=data.draw(st.integers(1, 200))) for code, state in stored.items()
    }
    assert not diff_items(stored, target)


@given(watchlists, watchlists)
def test_a_non_empty_diff_means_a_code_quantity_price_or_pending_differs(stored, target):
    identities_differ = {c: s.identity() for c, s in stored.items()} != {
        c: s.identity() for c, s in target.items()
    }
    assert bool(diff_items(stored, target)) == identities_differ


def test_a_watchlist_item_is_a_holding_plus_pending_in_every_shape():
    """One declaration (trading.brokers.base.Holding) maps to the item, the model, the API and the socket."""
    from trading.brokers.base import BALANCE_COLUMNS, HOLDING_FIELDS
    from watchlist.diff import ITEM_FIELDS
    from watchlist.models import WatchlistItem
    from watchlist.serializers import ItemSerializer

    assert (*HOLDING_FIELDS, "pending") == ITEM_FIELDS
    assert set(HOLDING_FIELDS) < set(BALANCE_COLUMNS)
    stored = {f.name for f in WatchlistItem._meta.concrete_fields} - {"id", "watchlist", "updated_at"}
    assert stored == set(ITEM_FIELDS)
    assert list(ItemSerializer().fields) == [*ITEM_FIELDS, "updated_at"]
