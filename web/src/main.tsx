import { render } from 'preact';
import { useEffect, useRef } from 'preact/hooks';
import './style.css';
import { useRoute } from './router';
import { Sessions } from './screens/sessions';
import { NewSession } from './screens/new-session';
import { SessionView } from './screens/session';
import { Hosts } from './screens/hosts';
import { Pair, takePairingFragment, Unpaired } from './screens/pair';
import { refreshAuth, useAuth } from './auth';

// Before anything renders or logs: the pairing code leaves the address bar and the history.
takePairingFragment();
void refreshAuth();

function App() {
  const route = useRoute();
  const auth = useAuth();
  // After a navigation in the page, focus moves to the new screen (as a page load would put it at the top).
  const first = useRef(true);
  useEffect(() => {
    if (first.current) {
      first.current = false;
      return;
    }
    document.getElementById('main')?.focus({ preventScroll: true });
  }, [route.name, route.name === 'session' ? route.id : '']);
  return (
    <>
      <a class="skip" href="#main">
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="/">
          omnigent
        </a>
        <nav aria-label="Main">
          <a href="/" aria-current={route.name === 'sessions' ? 'page' : undefined}>
            Sessions
          </a>
          <a href="/new" aria-current={route.name === 'new' ? 'page' : undefined}>
            New session
          </a>
          <a href="/hosts" aria-current={route.name === 'hosts' ? 'page' : undefined}>
            Hosts
          </a>
        </nav>
      </header>
      <main id="main" tabIndex={-1}>
        {route.name === 'pair' && <Pair />}
        {route.name !== 'pair' && auth.unpaired && <Unpaired />}
        {auth.unpaired ? null : <Screens route={route} />}
      </main>
    </>
  );
}

function Screens({ route }: { route: ReturnType<typeof useRoute> }) {
  return (
    <>
        {route.name === 'sessions' && <Sessions />}
        {route.name === 'new' && <NewSession />}
        {route.name === 'hosts' && <Hosts />}
        {route.name === 'session' && <SessionView key={route.id} id={route.id} />}
        {route.name === 'missing' && (
          <section class="page">
            <h1>Not found</h1>
            <p>
              Nothing here. <a href="/">Back to the sessions</a>.
            </p>
          </section>
        )}
    </>
  );
}

render(<App />, document.getElementById('app')!);
