// Sessions: the live list (title, agent, status, host, runner online/offline, last update), full-text
// search through the server (`search_query`), and an archived toggle.
import { useEffect, useLayoutEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ago, api, type Host, type List, type SessionRow, sessionsQuery } from '../api';
import { watchSessions } from '../live';
import { Alert, StatusBadge } from '../status';

/** The unfiltered list, asked for as soon as the script runs when the page opens on `/`. */
let early: Promise<List<SessionRow>> | null =
  location.pathname === '/' ? api<List<SessionRow>>(sessionsQuery({})) : null;

export function Sessions() {
  const [rows, setRows] = useState<SessionRow[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [search, setSearch] = useState('');
  const [archived, setArchived] = useState(false);
  const [hosts, setHosts] = useState<Record<string, string>>({});
  const [, tick] = useState(0);
  const filters = useRef({ search, archived });
  filters.current = { search, archived };
  const rowsRef = useRef<SessionRow[]>([]);
  const liveRef = useRef<{ rewatch: () => void } | null>(null);
  rowsRef.current = rows ?? [];

  const load = async () => {
    const { search, archived } = filters.current;
    try {
      const first = !search.trim() && !archived ? early : null;
      early = null;
      const page = await (first ?? api<List<SessionRow>>(sessionsQuery({ search: search.trim(), archived })));
      if (filters.current.search === search && filters.current.archived === archived) {
        setRows(page.data);
        setError(null);
      }
    } catch (e) {
      setError((e as Error).message);
    }
  };

  // A layout effect: started at once, not after the next frame (Preact runs plain effects after paint).
  useLayoutEffect(() => {
    void load();
  }, [search, archived]);

  useEffect(() => {
    api<{ hosts: Host[] }>('/v1/hosts')
      .then((h) => setHosts(Object.fromEntries(h.hosts.map((x) => [x.host_id, x.name]))))
      .catch(() => {});
    const live = watchSessions({
      watched: () => rowsRef.current.map((r) => r.id),
      onRows: (changed) =>
        setRows((old) => {
          const list = [...(old ?? [])];
          const { search, archived } = filters.current;
          for (const row of changed) {
            const at = list.findIndex((r) => r.id === row.id);
            if (at >= 0) list[at] = { ...list[at], ...row };
            else if (!search.trim() && (archived || !row.archived)) list.push(row);
          }
          return list
            .filter((r) => archived || !r.archived)
            .sort((a, b) => b.updated_at - a.updated_at || b.created_at - a.created_at);
        }),
      onRemoved: (ids) => setRows((old) => (old ?? []).filter((r) => !ids.includes(r.id))),
      poll: load,
    });
    liveRef.current = live;
    const timer = setInterval(() => tick((n) => n + 1), 30_000);
    return () => {
      live.close();
      clearInterval(timer);
    };
  }, []);

  const ids = useMemo(() => (rows ?? []).map((r) => r.id).join(','), [rows]);
  // First paint of the list, for the benchmark (web/bench).
  const marked = useRef(false);
  useLayoutEffect(() => {
    if (rows !== null && !marked.current) {
      marked.current = true;
      performance.mark('omnigent:sessions-rendered');
    }
  }, [rows]);
  // The socket watches the rows on screen: tell it when they change.
  useEffect(() => liveRef.current?.rewatch(), [ids]);

  return (
    <section class="page" aria-labelledby="sessions-title">
      <div class="page-head">
        <h1 id="sessions-title">Sessions</h1>
        <a class="button primary" href="/new">
          New session
        </a>
      </div>
      <div class="filters">
        <label class="grow">
          <span class="visually-hidden">Search sessions</span>
          <input
            type="search"
            placeholder="Search sessions"
            value={search}
            onInput={(e) => setSearch((e.target as HTMLInputElement).value)}
          />
        </label>
        <label class="check">
          <input
            type="checkbox"
            checked={archived}
            onChange={(e) => setArchived((e.target as HTMLInputElement).checked)}
          />
          Show archived
        </label>
      </div>
      <Alert error={error} />
      {rows === null ? (
        <p class="muted">Loading…</p>
      ) : rows.length === 0 ? (
        <p class="muted" data-testid="empty">
          {search ? 'No session matches.' : 'No sessions yet.'} <a href="/new">Start one</a>.
        </p>
      ) : (
        <ul class="session-list" data-testid="session-list">
          {rows.map((r) => (
            <li key={r.id}>
              <a class="session-row" href={`/sessions/${r.id}`}>
                <span class="row-title">{r.title || 'Untitled session'}</span>
                <span class="row-meta">
                  <StatusBadge status={r.status} />
                  <span>{r.agent_name ?? r.agent_id}</span>
                  {r.host_id && <span>{hosts[r.host_id] ?? 'host'}</span>}
                  <span class={r.runner_online ? 'online' : 'offline'}>
                    {r.runner_online ? 'runner online' : 'runner offline'}
                  </span>
                  {r.archived && <span>archived</span>}
                  <time dateTime={new Date(r.updated_at * 1000).toISOString()}>{ago(r.updated_at)}</time>
                </span>
              </a>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}
