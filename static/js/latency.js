// Commit-to-browser latency: last, p50 and p99 (ms) over the last 1000 events, drawn at most 5x/s.

const WINDOW = 1000;
const RENDER_EVERY_MS = 200;

export class LatencyMeter {
  constructor(el) {
    this.el = el;
    this.samples = new Float64Array(WINDOW);
    this.count = 0;
    this.next = 0;
    this.last = null;
    this.renderTimer = 0;
  }

  /** Record one event: `ts` is the trigger's epoch ms, `receivedAt` the browser's epoch ms. */
  record(ts, receivedAt) {
    const t = Number(ts);
    if (!Number.isFinite(t)) return;
    const ms = receivedAt - t;
    this.samples[this.next] = ms;
    this.next = (this.next + 1) % WINDOW;
    this.count = Math.min(this.count + 1, WINDOW);
    this.last = ms;
    if (!this.renderTimer) this.renderTimer = setTimeout(() => this.render(), RENDER_EVERY_MS);
  }

  percentile(sorted, p) {
    // Nearest-rank percentile.
    const rank = Math.ceil((p / 100) * sorted.length);
    return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
  }

  render() {
    this.renderTimer = 0;
    if (!this.el || this.count === 0) return;
    const sorted = this.samples.slice(0, this.count).sort();
    const fmt = (ms) => (Math.abs(ms) < 100 ? ms.toFixed(1) : String(Math.round(ms)));
    const set = (attr, ms) => {
      const span = this.el.querySelector(`[${attr}]`);
      if (span) span.textContent = fmt(ms);
    };
    set('data-last', this.last);
    set('data-p50', this.percentile(sorted, 50));
    set('data-p99', this.percentile(sorted, 99));
    this.el.title = `Commit-to-browser latency over the last ${this.count} events (ms)`;
    this.el.classList.add('has-data');
  }
}
