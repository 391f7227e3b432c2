// A sparkline of recent prices on a <canvas>: a line scaled to the window's range, sharp on HiDPI.

/** Draw `values` (numbers, oldest first) across the canvas; rising since the first value in the up colour. */
export function drawSparkline(canvas, values) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.width;
  const height = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  canvas.dataset.points = String(values.length);
  if (values.length < 2) return;
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const pad = 2;
  const x = (i) => pad + (i * (width - 2 * pad)) / (values.length - 1);
  const y = (v) => height - pad - ((v - lo) * (height - 2 * pad)) / span;
  const style = getComputedStyle(canvas);
  const rising = values[values.length - 1] >= values[0];
  ctx.strokeStyle = style.getPropertyValue(rising ? '--up' : '--down').trim() || (rising ? '#1a7f37' : '#cf222e');
  ctx.lineWidth = 1.25;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.stroke();
  ctx.fillStyle = ctx.strokeStyle;
  ctx.beginPath();
  ctx.arc(x(values.length - 1), y(values[values.length - 1]), 1.75, 0, 2 * Math.PI);
  ctx.fill();
}
