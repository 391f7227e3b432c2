// The header's connection indicator (#conn-status): text is exactly live, reconnecting or offline.

export function bindConnStatus(socket, el = document.getElementById('conn-status')) {
  if (!el) return;
  const show = (status) => {
    el.textContent = status;
    el.dataset.status = status;
  };
  show(socket.status);
  socket.addEventListener('status', (ev) => show(ev.detail));
}
