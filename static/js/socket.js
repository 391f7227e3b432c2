// One WebSocket to /ws that reconnects with capped, jittered backoff and reports live/reconnecting/offline.

const PING_EVERY_MS = 20000;
const PONG_WITHIN_MS = 10000;
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 8000];
const OFFLINE_AFTER_FAILURES = 5;

/**
 * Events: 'status' (detail: 'live'|'reconnecting'|'offline'), 'open', 'close',
 * 'frame' (detail: {frame, receivedAt}) where receivedAt is epoch ms at arrival.
 */
export class LiveSocket extends EventTarget {
  constructor(path = '/ws') {
    super();
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    this.url = `${scheme}//${location.host}${path}`;
    this.ws = null;
    this.status = 'offline';
    this.failures = 0;
    this.retryTimer = 0;
    this.pingTimer = 0;
    this.pongTimer = 0;
    this.pingId = 0;
    this.stopped = false;
    window.addEventListener('online', () => this.reconnectNow());
    window.addEventListener('offline', () => this.setStatus('offline'));
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  /** Send a JSON frame; false when the socket is not open (the caller resends on 'open'). */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.setStatus(this.failures >= OFFLINE_AFTER_FAILURES || !navigator.onLine ? 'offline' : 'reconnecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.addEventListener('open', () => {
      if (ws !== this.ws) return;
      this.failures = 0;
      this.setStatus('live');
      this.startHeartbeat();
      this.dispatchEvent(new Event('open'));
    });
    ws.addEventListener('message', (msg) => {
      if (ws !== this.ws) return;
      const receivedAt = performance.timeOrigin + performance.now();
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        console.warn('orderstream: ignoring a non-JSON frame', msg.data);
        return;
      }
      if (frame.type === 'pong') clearTimeout(this.pongTimer);
      this.dispatchEvent(new CustomEvent('frame', { detail: { frame, receivedAt } }));
    });
    ws.addEventListener('close', (ev) => {
      if (ws !== this.ws) return;
      this.ws = null;
      this.stopHeartbeat();
      this.dispatchEvent(new CustomEvent('close', { detail: { code: ev.code, reason: ev.reason } }));
      if (!this.stopped) this.scheduleRetry();
    });
    // 'error' is always followed by 'close'; nothing to do here.
  }

  scheduleRetry() {
    this.failures += 1;
    const base = BACKOFF_MS[Math.min(this.failures - 1, BACKOFF_MS.length - 1)];
    const delay = base / 2 + Math.random() * base; // jitter so a restarted server is not stampeded
    this.setStatus(this.failures > OFFLINE_AFTER_FAILURES || !navigator.onLine ? 'offline' : 'reconnecting');
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  /** Try again at once (the network came back, or the user asked). */
  reconnectNow() {
    if (this.isOpen || this.stopped) return;
    if (this.ws) return; // a connection attempt is already under way
    this.failures = Math.min(this.failures, OFFLINE_AFTER_FAILURES - 1);
    this.connect();
  }

  /** Drop the current connection and reconnect (used when pongs stop coming). */
  recycle() {
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      this.stopHeartbeat();
      ws.close(4000, 'no pong');
      this.dispatchEvent(new CustomEvent('close', { detail: { code: 4000, reason: 'no pong' } }));
      this.scheduleRetry();
    }
  }

  startHeartbeat() {
    this.stopHeartbeat();
    this.pingTimer = setInterval(() => {
      this.pingId += 1;
      if (this.send({ op: 'ping', id: this.pingId })) {
        clearTimeout(this.pongTimer);
        this.pongTimer = setTimeout(() => this.recycle(), PONG_WITHIN_MS);
      }
    }, PING_EVERY_MS);
  }

  stopHeartbeat() {
    clearInterval(this.pingTimer);
    clearTimeout(this.pongTimer);
  }

  setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this.dispatchEvent(new CustomEvent('status', { detail: status }));
  }
}
