// autopyfactory dashboard: draws charts with the vendored uPlot and keeps them current.
// Everything else on the pages is server-rendered HTML (htmx swaps the live parts in).
(function () {
  "use strict";
  const COLORS = { demand: "#1f77b4", pending: "#ff7f0e", running: "#2ca02c", n: "#9467bd" };
  const refresh = Math.max(1, Number(document.body.dataset.refresh || 5)) * 1000;

  function width(el) { return Math.max(el.clientWidth || 0, 320); }

  function queueOptions(el) {
    const s = (label, key, extra) => Object.assign({ label: label, stroke: COLORS[key], width: 2, spanGaps: true }, extra || {});
    return {
      width: width(el), height: 280,
      // the window asked for, however few decisions fall in it
      scales: { x: { time: true, range: (u, lo, hi) => [el._start != null ? el._start : lo, el._end != null ? el._end : hi] } },
      series: [{}, s("demand", "demand"), s("pending", "pending"), s("running", "running"),
               s("decided n", "n", { dash: [4, 3], width: 1.5 })],
      axes: [{}, { label: "pilots / jobs" }],
    };
  }

  async function drawQueue(el) {
    const response = await fetch(el.dataset.src, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    const d = await response.json();
    const data = [d.t, d.demand, d.pending, d.running, d.n];
    el._start = d.start; el._end = d.end;
    if (el._plot) {
      el._plot.setData(data);
    } else {
      el.replaceChildren();
      el._plot = new uPlot(queueOptions(el), data, el);
    }
    el.dataset.points = String(d.t.length);
    el.dataset.rendered = "1";
  }

  function drawBurn(el) {
    // the data travels in the element itself (htmx does not insert <script> elements it swaps in)
    const q = JSON.parse(el.dataset.burn);
    const x = q.t.slice();
    const actual = q.remaining.slice();
    const forecast = actual.map(() => null);
    const last = actual.length - 1;
    if (last >= 0 && q.rate_per_hour > 0 && !q.exhausted) {
      forecast[last] = actual[last];
      const until = q.runs_out_at || q.end;
      const left = q.runs_out_at ? 0 : actual[last] - q.rate_per_hour * (q.end - x[last]) / 3600;
      x.push(until); actual.push(null); forecast.push(left);
    } else if (x[last] < q.end) {
      x.push(q.end); actual.push(null); forecast.push(null);
    }
    const zero = x.map(() => 0);
    const opts = {
      width: width(el), height: 200,
      scales: { x: { time: true } },
      series: [{},
        { label: "remaining " + q.unit, stroke: "#1f77b4", width: 2, spanGaps: true, fill: "rgba(31,119,180,0.08)" },
        { label: "forecast", stroke: "#b3261e", width: 1.5, dash: [5, 4], spanGaps: true },
        { label: "empty", stroke: "#888", width: 1, points: { show: false } }],
    };
    if (el._plot) el._plot.destroy();
    el.replaceChildren();
    el._plot = new uPlot(opts, [x, actual, forecast, zero], el);
    el.dataset.rendered = "1";
  }

  function init(root) {
    if (typeof uPlot === "undefined") return;
    root.querySelectorAll(".chart[data-kind]").forEach(function (el) {
      const fail = function (e) { el.textContent = "chart unavailable: " + e.message; };
      try {
        if (el.dataset.kind === "queue" && !el._plot) drawQueue(el).catch(fail);
        else if (el.dataset.kind === "burn") drawBurn(el);
      } catch (e) { fail(e); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    init(document);
    if (window.htmx) htmx.onLoad(function (elt) { if (elt !== document.body) init(elt); });
    setInterval(function () {
      document.querySelectorAll(".chart[data-kind='queue']").forEach(function (el) {
        if (el._plot) drawQueue(el).catch(function () {});
      });
    }, refresh);
    window.addEventListener("resize", function () {
      document.querySelectorAll(".chart[data-kind]").forEach(function (el) {
        if (el._plot) el._plot.setSize({ width: width(el), height: el._plot.height });
      });
    });
  });
})();
