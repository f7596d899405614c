// Client-side routes on the History API: `/`, `/new`, `/hosts`, `/sessions/{id}`. The server answers
// index.html for each (SPA fallback), so any of them can be reloaded or opened directly.
import { useEffect, useState } from 'preact/hooks';

export type Route =
  | { name: 'sessions' }
  | { name: 'new' }
  | { name: 'hosts' }
  | { name: 'pair' }
  | { name: 'session'; id: string }
  | { name: 'missing' };

export function parse(path: string): Route {
  if (path === '/' || path === '') return { name: 'sessions' };
  if (path === '/new') return { name: 'new' };
  if (path === '/hosts') return { name: 'hosts' };
  if (path === '/pair') return { name: 'pair' };
  const m = /^\/sessions\/([A-Za-z0-9_.-]{1,128})$/.exec(path);
  if (m) return { name: 'session', id: m[1] };
  return { name: 'missing' };
}

export function navigate(path: string) {
  if (path !== location.pathname + location.search) history.pushState(null, '', path);
  dispatchEvent(new PopStateEvent('popstate'));
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parse(location.pathname));
  useEffect(() => {
    const on = () => setRoute(parse(location.pathname));
    addEventListener('popstate', on);
    // Same-origin links navigate in place, unless opened in a new tab.
    const click = (e: MouseEvent) => {
      const a = (e.target as Element | null)?.closest?.('a');
      if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      if (a.target || a.origin !== location.origin) return;
      e.preventDefault();
      navigate(a.pathname + a.search);
    };
    document.addEventListener('click', click);
    return () => {
      removeEventListener('popstate', on);
      document.removeEventListener('click', click);
    };
  }, []);
  return route;
}
