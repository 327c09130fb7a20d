"""The KPI and execution endpoints under real gunicorn, on KPIs written by the gateway."""
from decimal import ROUND_HALF_UP, Decimal

import requests

from app.files.kpis import CategoryKpi, OrderKpi
from app.store import FilesStore

ORDER_KPIS = [OrderKpi("2024-01-02", 3, 10001, 5, 2, 1), OrderKpi("2024-01-05", 7, 12345, 9, 6, 2)]
CATEGORY_KPIS = [CategoryKpi("Tops", "2024-01-02", 2001, 3, 4, 1),
                 CategoryKpi("Jeans", "2024-01-02", 8000, 2, 1, 0),
                 CategoryKpi("Jeans", "2024-01-05", 12345, 6, 9, 2)]


def half_up(value: Decimal) -> float:
    return float(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def test_order_and_category_kpis_are_served_by_date_and_category(api_server, store):
    files_store = FilesStore(store.redis)
    files_store.write_kpis(1, ["2024-01-02", "2024-01-05"], ORDER_KPIS, CATEGORY_KPIS)

    response = requests.get(f"{api_server}/kpis/orders",
                            params={"from": "2024-01-01", "to": "2024-01-31"})
    assert response.status_code == 200
    assert response.json() == [
        {"order_date": k.order_date, "total_orders": k.total_orders,
         "total_revenue": float(Decimal(k.total_revenue_cents) / 100),
         "total_items_sold": k.total_items_sold, "unique_customers": k.unique_customers,
         "return_rate": half_up(Decimal(100 * k.returned_orders) / k.total_orders)}
        for k in ORDER_KPIS]
    # 100 × 1/3 = 33.33; 100 × 2/7 = 28.57 (half up from 28.571...)
    assert [r["return_rate"] for r in response.json()] == [33.33, 28.57]

    def expected(kpi):
        return {"category": kpi.category, "order_date": kpi.order_date,
                "daily_revenue": float(Decimal(kpi.daily_revenue_cents) / 100),
                "avg_order_value": half_up(Decimal(kpi.daily_revenue_cents) / 100 / kpi.orders),
                "avg_return_rate": half_up(Decimal(100 * kpi.returned_items) / kpi.items)}

    by_category = sorted(CATEGORY_KPIS, key=lambda k: (k.category, k.order_date))
    assert requests.get(f"{api_server}/kpis/categories",
                        params={"from": "2024-01-01", "to": "2024-01-31"}).json() == [
        expected(k) for k in by_category]
    assert requests.get(f"{api_server}/kpis/categories", params={
        "from": "2024-01-03", "to": "2024-01-31", "category": "Jeans"}).json() == [
        expected(CATEGORY_KPIS[2])]
    assert requests.get(f"{api_server}/kpis/orders",
                        params={"from": "2024-02-01", "to": "2024-02-02"}).json() == []


def test_bad_arguments_get_the_api_error_shape(api_server):
    response = requests.get(f"{api_server}/kpis/orders", params={"from": "2024-01-05",
                                                                "to": "2024-01-01"})
    assert response.status_code == 422
    assert response.json()["errors"] == {"from": ["Must not be after the end of the range."]}
    response = requests.get(f"{api_server}/files/executions", params={"limit": 0})
    assert response.status_code == 422 and "limit" in response.json()["errors"]
    response = requests.get(f"{api_server}/files/executions/nope")
    assert response.status_code == 404
    assert response.json() == {"error": "No execution 'nope'.", "status": 404}


def test_executions_are_listed_newest_first_and_shown_by_id(api_server, store):
    files_store = FilesStore(store.redis)
    records = [{"execution_id": f"E{i}", "status": "succeeded", "started_at": f"t{i}",
                "started_at_ms": 1000 + i, "files": [{"key": f"input/orders_{i}.csv"}]}
               for i in range(3)]
    for record in records:
        files_store.save_execution(record)
    listed = requests.get(f"{api_server}/files/executions", params={"limit": 2}).json()
    assert [r["execution_id"] for r in listed] == ["E2", "E1"]
    assert requests.get(f"{api_server}/files/executions/E0").json() == records[0]
