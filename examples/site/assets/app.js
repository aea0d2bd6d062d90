// Renders the page for location.pathname from /users.json: `/` lists the users, `/users/ID`
// shows one. Deep links work because portico answers every page path with index.html.
const app = document.getElementById('app');

function render(data) {
  const path = location.pathname;
  const user = path.match(/^\/users\/(\d+)$/);
  if (path === '/') {
    return `Home: ${data.users.map((u) => u.name).join(', ')}`;
  }
  if (user) {
    const found = data.users.find((u) => String(u.id) === user[1]);
    return found ? `User ${found.id}: ${found.name}` : `No user ${user[1]}`;
  }
  return `Not found: ${path}`;
}

fetch('/users.json')
  .then((r) => r.json())
  .then((data) => {
    app.textContent = render(data);
  })
  .catch((err) => {
    app.textContent = `Error: ${err}`;
  })
  .finally(() => {
    const ready = document.createElement('span');
    ready.id = 'ready';
    document.body.appendChild(ready);
  });
