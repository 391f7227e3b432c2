// What every live page shares: the socket, the header's connection indicator and latency meter.

import { LiveSocket } from './socket.js';
import { LatencyMeter } from './latency.js';
import { bindConnStatus } from './conn-status.js';
import { listOrders } from './api.js';

const PROBE_AFTER_FAILURES = 2;
const PROBE_EVERY_MS = 10000;

export function startLivePage() {
  const socket = new LiveSocket('/ws');
  bindConnStatus(socket);
  const latency = new LatencyMeter(document.getElementById('latency'));

  // A refused handshake looks like any dropped connection. If it keeps failing, ask the API once in a
  // while: a 401 there means the session ended, and api.js sends the user to the login page.
  let lastProbe = 0;
  socket.addEventListener('status', () => {
    const now = Date.now();
    if (socket.failures < PROBE_AFTER_FAILURES || now - lastProbe < PROBE_EVERY_MS) return;
    lastProbe = now;
    listOrders({ limit: 1 }).catch(() => {}); // only its 401 redirect matters; the server may just be down
  });
  return { socket, latency };
}
