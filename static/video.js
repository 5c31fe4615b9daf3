// Draws each video track's fake probability over time, from the JSON the page carries
// (#video-data): one small SVG per track, with the decision threshold as a dashed line.
"use strict";
(function () {
  const source = document.getElementById("video-data");
  if (!source) return;
  const data = JSON.parse(source.textContent);
  const svgNS = "http://www.w3.org/2000/svg";
  const width = 300, height = 80, pad = 4;
  const span = Math.max(data.duration_s, 1e-6);
  const x = (t) => pad + (width - 2 * pad) * (t / span);
  const y = (p) => height - pad - (height - 2 * pad) * p;

  function element(name, attributes) {
    const node = document.createElementNS(svgNS, name);
    for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
    return node;
  }

  document.querySelectorAll(".plot[data-track]").forEach(function (holder) {
    const track = data.tracks[Number(holder.dataset.track)];
    if (!track) return;
    const svg = element("svg", { viewBox: `0 0 ${width} ${height}`, class: "score-plot" });
    svg.appendChild(element("rect", { x: 0.5, y: 0.5, width: width - 1, height: height - 1, class: "plot-frame" }));
    svg.appendChild(element("line", { x1: pad, x2: width - pad, y1: y(data.threshold), y2: y(data.threshold), class: "plot-threshold" }));
    const points = track.times.map((t, i) => `${x(t).toFixed(1)},${y(track.scores[i]).toFixed(1)}`);
    svg.appendChild(element("polyline", { points: points.join(" "), class: "plot-line" }));
    track.times.forEach(function (t, i) {
      const dot = element("circle", { cx: x(t).toFixed(1), cy: y(track.scores[i]).toFixed(1), r: 2.5,
                                      class: track.scores[i] >= data.threshold ? "plot-dot fake" : "plot-dot real" });
      const title = element("title", {});
      title.textContent = `${t.toFixed(2)} s: ${(track.scores[i] * 100).toFixed(1)}% fake`;
      dot.appendChild(title);
      svg.appendChild(dot);
    });
    holder.appendChild(svg);
  });
})();
