// DataTables in server-side mode, as its manual shows, pointed at orderstream's list endpoint.
window.requests = [];
window.table = new DataTable('#orders', {
  serverSide: true,
  processing: false,
  pageLength: 10,
  ajax: {
    url: '/api/orders',
    data: (d) => { d.format = 'datatables'; window.requests.push(d); },
  },
  columns: [
    { data: 'id' },
    { data: 'instrument' },
    { data: 'price', className: 'dt-right' },
    { data: 'owner' },
    { data: 'note', orderable: false, searchable: false },
  ],
  order: [[0, 'asc']],
});
