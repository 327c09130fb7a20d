"""The analytics endpoints on a real Redis: exact JSON, zeros, ties and named bad arguments."""
from datetime import datetime, timezone

import pytest
import schemathesis

from app.orders import Incoming, evaluate
from app.settings import Settings
from web import create_app
from bench.order_builders import order_body

NOW = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def client(settings):
    return create_app(settings).test_client()


def order(order_id, user_id, at, *lines):
    """An order body placed at a time; lines are (product, quantity, unit price)."""
    return order_body(order_id, user_id, lines=[(p, q, round(price * 100)) for p, q, price in lines],
                      order_timestamp=at)


# order  user  UTC time            lines           value
# W1     U1    2024-03-01 10:00    P1 x2 @ 12.50   25.00
# W2     U2    2024-03-01 11:00    P2 x1 @ 25.00   25.00  (delivered twice)
# W3     U1    2024-03-02 09:00    P2 x1 @ 25.00   25.00
# W4     U3    2024-03-01 00:30    P1 x1 @ 12.50   12.50  (sent as 23:30-01:00 on 02-29, last)
ORDERS = [order("W1", "U1", "2024-03-01T10:00:00Z", ("P1", 2, 12.5)),
          order("W2", "U2", "2024-03-01T11:00:00Z", ("P2", 1, 25.0)),
          order("W3", "U1", "2024-03-02T09:00:00Z", ("P2", 1, 25.0))]
LATE = order("W4", "U3", "2024-02-29T23:30:00-01:00", ("P1", 1, 12.5))


def seed(store):
    """Count the orders above, with one duplicate delivery and the late order last."""
    bodies = [*ORDERS, ORDERS[1], LATE]
    outcomes = store.apply([evaluate(Incoming(b, f"m{i}"), Settings(), now=NOW)
                            for i, b in enumerate(bodies)])
    assert outcomes == ["counted"] * 3 + ["duplicate", "counted"]


@pytest.fixture
def shop(store):
    seed(store)
    return store


def get(client, url):
    response = client.get(url)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def user(rank, user_id, spend, orders, avg):
    return {"rank": rank, "user_id": user_id, "total_spend": spend, "order_count": orders,
            "avg_order_value": avg}


def test_top_users_all_time(client, shop):
    # U1: W1 + W3 = 50.00 in 2 orders; U2: 25.00; U3: 12.50.
    assert get(client, "/stats/top-users") == {"by": "spend", "n": 10, "period": None, "users": [
        user(1, "U1", 50.0, 2, 25.0), user(2, "U2", 25.0, 1, 25.0), user(3, "U3", 12.5, 1, 12.5)]}


def test_top_users_of_a_day_break_ties_by_id(client, shop):
    # 03-01: U1 25.00 (W1) and U2 25.00 (W2) tie; U3's late W4 (12.50) is on 03-01 in UTC.
    body = get(client, "/stats/top-users?n=2&by=spend&day=2024-03-01")
    assert body == {"by": "spend", "n": 2, "period": {"from": "2024-03-01", "to": "2024-03-01"},
                    "users": [user(1, "U1", 25.0, 1, 25.0), user(2, "U2", 25.0, 1, 25.0)]}
    assert get(client, "/stats/top-users?day=2024-02-29")["users"] == []


def test_top_users_of_a_month_and_of_a_range(client, shop):
    march = get(client, "/stats/top-users?by=orders&month=2024-03")
    assert march["period"] == {"from": "2024-03-01", "to": "2024-03-31"}
    assert [(u["user_id"], u["order_count"]) for u in march["users"]] == [
        ("U1", 2), ("U2", 1), ("U3", 1)]
    ranged = get(client, "/stats/top-users?from=2024-03-02&to=2024-03-03")
    assert ranged["users"] == [user(1, "U1", 25.0, 1, 25.0)]
    assert get(client, "/stats/top-users?month=2024-02")["users"] == []


def test_top_products_and_product_stats(client, shop):
    # P1: W1 2 x 12.50 + W4 1 x 12.50 = 37.50, 3 units; P2: W2 + W3 = 50.00, 2 units.
    assert get(client, "/stats/top-products") == {"by": "revenue", "n": 10, "products": [
        {"rank": 1, "product_id": "P2", "revenue": 50.0, "units_sold": 2},
        {"rank": 2, "product_id": "P1", "revenue": 37.5, "units_sold": 3}]}
    assert [p["product_id"] for p in get(client, "/stats/top-products?by=units&n=1")[
        "products"]] == ["P1"]
    assert get(client, "/products/P1/stats") == {"product_id": "P1", "units_sold": 3,
                                                 "revenue": 37.5, "orders": 2}
    missing = client.get("/products/P9/stats")
    assert missing.status_code == 404 and "P9" in missing.get_json()["error"]


def kpis(orders, revenue, items, customers, avg):
    return {"total_orders": orders, "total_revenue": revenue, "total_items_sold": items,
            "unique_customers": customers, "avg_order_value": avg}


def test_daily_kpis_with_zeros(client, shop):
    # 03-01: W1 25.00 + W2 25.00 + W4 12.50 = 62.50 over 3 orders (20.83), 2 + 1 + 1 items.
    assert get(client, "/stats/daily?from=2024-02-29&to=2024-03-03") == {
        "from": "2024-02-29", "to": "2024-03-03", "days": [
            {"date": "2024-02-29", **kpis(0, 0.0, 0, 0, 0.0)},
            {"date": "2024-03-01", **kpis(3, 62.5, 4, 3, 20.83)},
            {"date": "2024-03-02", **kpis(1, 25.0, 1, 1, 25.0)},
            {"date": "2024-03-03", **kpis(0, 0.0, 0, 0, 0.0)}]}
    assert len(get(client, "/stats/daily?from=2024-01-01&to=2024-12-31")["days"]) == 366


def test_monthly_kpis_with_zeros(client, shop):
    # March: 87.50 over 4 orders is 21.875 a order, rounded half up to 21.88; U1 twice.
    assert get(client, "/stats/monthly?from=2024-02&to=2024-04") == {
        "from": "2024-02", "to": "2024-04", "months": [
            {"month": "2024-02", **kpis(0, 0.0, 0, 0, 0.0)},
            {"month": "2024-03", **kpis(4, 87.5, 5, 3, 21.88)},
            {"month": "2024-04", **kpis(0, 0.0, 0, 0, 0.0)}]}


def test_user_stats_without_a_range_keep_their_shape(client, shop):
    assert get(client, "/users/U1/stats") == {"user_id": "U1", "order_count": 2,
                                              "total_spend": 50.0}


def test_user_stats_over_a_range_list_every_day(client, shop):
    assert get(client, "/users/U1/stats?from=2024-02-29&to=2024-03-02") == {
        "user_id": "U1", "order_count": 2, "total_spend": 50.0, "from": "2024-02-29",
        "to": "2024-03-02", "avg_order_value": 25.0, "days": [
            {"date": "2024-02-29", "order_count": 0, "total_spend": 0.0},
            {"date": "2024-03-01", "order_count": 1, "total_spend": 25.0},
            {"date": "2024-03-02", "order_count": 1, "total_spend": 25.0}]}
    # The late order sent for 02-29 at -01:00 is on 03-01 in UTC.
    late = get(client, "/users/U3/stats?from=2024-02-29&to=2024-03-01")
    assert [d["order_count"] for d in late["days"]] == [0, 1]
    assert client.get("/users/nobody/stats?from=2024-03-01&to=2024-03-01").status_code == 404


def test_user_summary(client, shop):
    assert get(client, "/users/U1/summary") == {
        "user_id": "U1", "order_count": 2, "total_spend": 50.0, "avg_order_value": 25.0,
        "first_order_at": "2024-03-01T10:00:00+00:00",
        "last_order_at": "2024-03-02T09:00:00+00:00"}
    assert get(client, "/users/U3/summary")["first_order_at"] == "2024-03-01T00:30:00+00:00"
    assert client.get("/users/nobody/summary").status_code == 404


def test_odd_ids_reach_their_own_figures(client, store):
    body = order("X1", "a/b:*", "2024-03-01T10:00:00Z", ("p/1 é", 1, 3.0))
    assert store.apply([evaluate(Incoming(body, "x"), Settings(), now=NOW)]) == ["counted"]
    assert get(client, "/users/a%2Fb:*/stats?from=2024-03-01&to=2024-03-01")[
        "total_spend"] == 3.0
    assert get(client, "/products/p%2F1%20%C3%A9/stats")["revenue"] == 3.0
    assert get(client, "/stats/top-users?day=2024-03-01")["users"][0]["user_id"] == "a/b:*"


def test_top_products_of_a_day(client, shop):
    # 03-01 (UTC): W1 P1 2 x 12.50, W2 P2 25.00 (delivered twice), the late W4 P1 12.50.
    day = {"P1": (2 * 12.5 + 12.5, 2 + 1), "P2": (25.0, 1)}
    body = get(client, "/stats/top-products?day=2024-03-01&by=units")
    assert body == {"by": "units", "n": 10, "day": "2024-03-01", "products": [
        {"rank": rank, "product_id": product, "revenue": day[product][0],
         "units_sold": day[product][1]} for rank, product in enumerate(["P1", "P2"], start=1)]}
    assert get(client, "/stats/top-products?day=2024-03-02&n=1")["products"] == [
        {"rank": 1, "product_id": "P2", "revenue": 25.0, "units_sold": 1}]
    assert get(client, "/stats/top-products?day=2024-02-29")["products"] == []


@pytest.mark.parametrize("url, names", [
    ("/stats/top-users?n=0", ["n"]),
    ("/stats/top-users?n=1000000000", ["n"]),
    ("/stats/top-users?n=ten", ["n"]),
    ("/stats/top-users?by=money", ["by"]),
    ("/stats/top-users?day=2024-13-01", ["day"]),
    ("/stats/top-users?month=2024-1", ["month"]),
    ("/stats/top-users?month=0000-01", ["month"]),
    ("/stats/top-users?day=2024-03-01&month=2024-03", ["day", "month"]),
    ("/stats/top-users?month=2024-03&from=2024-03-01&to=2024-03-02", ["from", "month"]),
    ("/stats/top-users?from=2024-03-02&to=2024-03-01", ["from"]),
    ("/stats/top-users?from=2024-01-01&to=2025-01-01", ["to"]),
    ("/stats/top-users?from=2024-01-01", ["to"]),
    ("/stats/top-products?n=101", ["n"]),
    ("/stats/top-products?by=stars", ["by"]),
    ("/stats/top-products?day=2024-13-01", ["day"]),
    ("/stats/top-products?day=1%20March", ["day"]),
    ("/stats/daily", ["from", "to"]),
    ("/stats/daily?from=2024-03-01&to=2024-02-01", ["from"]),
    ("/stats/daily?from=2024-01-01&to=2025-01-01", ["to"]),
    ("/stats/daily?from=1%20March&to=2024-03-01", ["from"]),
    ("/stats/monthly?from=2024-01&to=2025-01", ["to"]),
    ("/stats/monthly?from=2024-05&to=2024-04", ["from"]),
    ("/stats/monthly?from=2024-00&to=2024-04", ["from"]),
    ("/users/U1/stats?to=2024-03-01", ["from"]),
    ("/users/U1/stats?from=2024-03-05&to=2024-03-01", ["from"]),
    ("/users/U1/stats?from=2023-03-01&to=2024-03-01", ["to"]),
])
def test_bad_arguments_are_422_json_naming_them(client, shop, url, names):
    response = client.get(url)
    assert response.status_code == 422
    body = response.get_json()
    assert body["status"] == 422
    assert body["error"] == "Invalid arguments: " + ", ".join(names)
    assert sorted(body["errors"]) == names


def test_a_range_of_exactly_a_year_is_accepted(client, shop):
    # 2023-03-01 .. 2024-02-29 is 366 days (2024 is a leap year); one more is refused above.
    assert len(get(client, "/users/U1/stats?from=2023-03-01&to=2024-02-29")["days"]) == 366
    assert len(get(client, "/stats/monthly?from=2024-01&to=2024-12")["months"]) == 12


def test_openapi_document_is_valid_and_documents_every_query(client):
    spec = client.get("/openapi.json").get_json()
    schemathesis.openapi.from_dict(spec).validate()
    paths = spec["paths"]
    assert {"/stats/top-users", "/stats/top-products", "/stats/daily", "/stats/monthly",
            "/users/{user_id}/stats", "/users/{user_id}/summary",
            "/products/{product_id}/stats"} <= set(paths)
    top = {p["name"]: p for p in paths["/stats/top-users"]["get"]["parameters"]}
    assert set(top) == {"n", "by", "day", "month", "from", "to"}
    assert (top["n"]["schema"]["minimum"], top["n"]["schema"]["maximum"]) == (1, 100)
    assert top["by"]["schema"]["enum"] == ["spend", "orders"]
    assert top["day"]["schema"]["format"] == "date"
    user = paths["/users/{user_id}/stats"]
    assert {p["name"] for p in user["get"]["parameters"] + user["parameters"]} == {
        "from", "to", "user_id"}
    for path in ("/stats/daily", "/stats/monthly", "/stats/top-users"):
        assert "422" in paths[path]["get"]["responses"]
