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

  // Whether the session still holds, the API says: a 401 there means it ended, and api.js sends the
  // user to the login page. Asked at once when the server closed the socket for policy (1008: logged
  // out, token revoked, account deleted); else, since a refused handshake looks like any dropped
  // connection, once a reconnect has failed too, and then once in a while. (Asked on every close, not
  // on status changes: the status stays "reconnecting" through the first few failures.)
  let lastProbe = 0;
  socket.addEventListener('close', (ev) => {
    const now = Date.now();
    const policy = ev.detail.code === 1008;
    const failures = socket.failures + 1; // this close counts once the socket schedules its retry
    if (!policy && (failures < PROBE_AFTER_FAILURES || now - lastProbe < PROBE_EVERY_MS)) return;
    lastProbe = now;
    listOrders({ limit: 1 }).catch(() => {}); // only its 401 redirect matters; the server may just be down
  });
  return { socket, latency };
}
