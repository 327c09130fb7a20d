// The live dashboard: reads /dashboard/figures every POLL_MS, draws rates and depths (uPlot).
"use strict";
(function () {
  const FIGURES = document.currentScript.dataset.figures;
  const POLL_MS = 2000;
  const KEPT = 150;  // readings drawn: five minutes at POLL_MS
  const RATES = [["counted", "#2e7d32"], ["rejected", "#c62828"], ["duplicate", "#f9a825"],
                 ["failed", "#6a1b9a"]];
  const DEPTHS = [["orders", "#1565c0"], ["orders_dlq", "#c62828"], ["files", "#00838f"],
                  ["files_dlq", "#ef6c00"]];
  const rates = [[], ...RATES.map(() => [])];
  const depths = [[], ...DEPTHS.map(() => [])];
  let previous = null;

  function chart(element, title, series, data) {
    return new uPlot({
      width: 560, height: 260, title: title,
      series: [{}, ...series.map(([label, stroke]) => ({label, stroke, width: 2}))],
      axes: [{}, {size: 60}],
      scales: {y: {range: (u, min, max) => [0, Math.max(1, max * 1.1)]}},
    }, data, element);
  }

  const charts = {
    rates: chart(document.getElementById("rates-chart"), "", RATES, rates),
    depths: chart(document.getElementById("queues-chart"), "", DEPTHS, depths),
  };
  window.pipelineDashboard = charts;  // for the browser test and the curious

  function push(series, time, values) {
    series[0].push(time);
    values.forEach((value, i) => series[i + 1].push(value));
    if (series[0].length > KEPT) series.forEach((column) => column.shift());
  }

  function show(id, text, bad) {
    const element = document.getElementById(id);
    element.textContent = text;
    element.parentElement.classList.toggle("bad", Boolean(bad));
  }

  function count(figures, name) {
    return name === "failed" ? figures.task_events.failed || 0 : figures.outcomes[name] || 0;
  }

  function money(amount) {
    return amount.toLocaleString("en", {minimumFractionDigits: 2, maximumFractionDigits: 2});
  }

  function depthByRole(queues, role) {
    return queues.filter((q) => q.role === role).reduce((sum, q) => sum + q.visible, 0);
  }

  function draw(figures) {
    RATES.forEach(([name]) => show(name, count(figures, name).toLocaleString("en")));
    if (previous !== null && figures.time > previous.time) {
      const seconds = figures.time - previous.time;
      push(rates, figures.time, RATES.map(([name]) =>
        Math.max(0, count(figures, name) - count(previous, name)) / seconds));
      charts.rates.setData(rates);
    }
    previous = figures;
    if (figures.queues === null) {
      ["orders-visible", "orders-dlq", "files-dlq"].forEach((id) => show(id, "?", true));
    } else {
      const now = DEPTHS.map(([role]) => depthByRole(figures.queues, role));
      show("orders-visible", now[0].toLocaleString("en"));
      show("orders-dlq", now[1].toLocaleString("en"), now[1] > 0);
      show("files-dlq", now[3].toLocaleString("en"), now[3] > 0);
      push(depths, figures.time, now);
      charts.depths.setData(depths);
    }
    const live = figures.workers_live;
    show("workers-live", live === null ? "?" : String(live), !live);
    const headroom = figures.store.headroom_ratio;
    show("headroom", !figures.store.writable ? "refusing writes" :
         headroom === null ? "no limit" : `${(headroom * 100).toFixed(1)} %`,
         !figures.store.writable || (headroom !== null && headroom < 0.1));
    show("today-orders", figures.today.total_orders.toLocaleString("en"));
    show("today-revenue", money(figures.today.total_revenue));
    show("yesterday-orders", figures.yesterday.total_orders.toLocaleString("en"));
    show("yesterday-revenue", money(figures.yesterday.total_revenue));
    fill("#top-users", figures.top_users_today.map((u) =>
      [u.user_id, money(u.total_spend), u.order_count]));
    fill("#top-products", figures.top_products_today.map((p) =>
      [p.product_id, money(p.revenue), p.units_sold]));
    const rejections = Object.entries(figures.rejected_by_field)
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    fill("#rejections", rejections);
    fill("#executions", figures.files_executions.map((e) =>
      [e.execution_id, e.status, e.started_at || "", e.rows_read, e.rows_kept]));
    document.querySelectorAll("#executions tbody tr").forEach((row) => {
      row.children[1].className = row.children[1].textContent;
    });
  }

  function fill(table, rows) {
    document.querySelector(`${table} tbody`).replaceChildren(...rows.map((values) => {
      const row = document.createElement("tr");
      values.forEach((value) => {
        const cell = document.createElement("td");
        cell.textContent = String(value);  // text, never HTML: fields and ids come from senders
        row.appendChild(cell);
      });
      return row;
    }));
  }

  async function poll() {
    const status = document.getElementById("status");
    try {
      const response = await fetch(FIGURES, {cache: "no-store"});
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      draw(await response.json());
      status.textContent = `updated ${new Date().toLocaleTimeString("en-GB")}`;
      status.className = "";
    } catch (error) {
      status.textContent = `no figures: ${error.message}`;
      status.className = "error";
    }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
