// Hosts: each host's name, online/offline, version, harnesses and their state, and its runners (the
// sessions bound to it whose runner is online).
import { useEffect, useState } from 'preact/hooks';
import { Alert } from '../status';
import { api, type Host, type List, type SessionRow, sessionsQuery } from '../api';
import { harnessState } from './new-session';

export function Hosts() {
  const [hosts, setHosts] = useState<Host[] | null>(null);
  const [sessions, setSessions] = useState<SessionRow[]>([]);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const load = async () => {
      try {
        const [h, s] = await Promise.all([
          api<{ hosts: Host[] }>('/v1/hosts'),
          api<List<SessionRow>>(sessionsQuery({ limit: 1000 })),
        ]);
        const details = await Promise.all(
          h.hosts.map((x) => api<Host>(`/v1/hosts/${encodeURIComponent(x.host_id)}`).catch(() => x)),
        );
        // A host's version is reported with the liveness of its sessions (`/health?session_ids=`).
        const oneSession = new Map(s.data.filter((x) => x.host_id).map((x) => [x.host_id as string, x.id]));
        if (oneSession.size > 0) {
          const health = await api<{ sessions?: Record<string, { host_version?: string | null }> }>(
            `/health?session_ids=${[...oneSession.values()].map(encodeURIComponent).join(',')}`,
          ).catch(() => ({ sessions: undefined }));
          for (const h of details) {
            const sid = oneSession.get(h.host_id);
            const version = sid ? health.sessions?.[sid]?.host_version : null;
            if (version && !h.version) h.version = version;
          }
        }
        setHosts(details);
        setSessions(s.data);
        setError(null);
      } catch (e) {
        setError((e as Error).message);
      }
    };
    void load();
    const timer = setInterval(load, 5000);
    return () => clearInterval(timer);
  }, []);

  return (
    <section class="page" aria-labelledby="hosts-title">
      <h1 id="hosts-title">Hosts</h1>
      <Alert error={error} />
      {hosts === null ? (
        <p class="muted">Loading…</p>
      ) : hosts.length === 0 ? (
        <p class="muted">No host has connected yet. Run `omnigent start` on a machine.</p>
      ) : (
        <ul class="cards">
          {hosts.map((h) => {
            const runners = sessions.filter((s) => s.host_id === h.host_id && s.runner_online);
            const harnesses = Object.entries(h.configured_harnesses ?? {}).sort(([a], [b]) => a.localeCompare(b));
            return (
              <li key={h.host_id} class="card">
                <h2>
                  {h.name} <span class={h.status === 'online' ? 'online' : 'offline'}>{h.status}</span>
                </h2>
                <p class="muted">
                  version {h.version ?? h.host_version ?? 'unknown'} · <code>{h.host_id}</code>
                </p>
                <h3>Harnesses</h3>
                <ul class="tags">
                  {harnesses.map(([name, value]) => (
                    <li key={name} class={`tag harness-${harnessState(value).replace(/ /g, '-')}`}>
                      {name}: {harnessState(value)}
                    </li>
                  ))}
                </ul>
                <h3>Runners ({runners.length} online)</h3>
                {runners.length === 0 ? (
                  <p class="muted">None running.</p>
                ) : (
                  <ul class="plain">
                    {runners.map((s) => (
                      <li key={s.id}>
                        <a href={`/sessions/${s.id}`}>{s.title || 'Untitled session'}</a>{' '}
                        <code class="muted">{s.runner_id}</code>
                      </li>
                    ))}
                  </ul>
                )}
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}
