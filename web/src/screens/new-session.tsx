// New session: an online host, an agent whose harness that host has configured, a workspace picked by
// browsing the host's filesystem (`GET /v1/hosts/{id}/filesystem`, `…/filesystem/stat`, `POST …/directories`),
// and a title. Creates the session (`POST /v1/sessions`) and opens it.
import { useEffect, useState } from 'preact/hooks';
import { Alert } from '../status';
import { type Agent, api, type DirEntry, type Host, type List, post } from '../api';
import { navigate } from '../router';

/** A harness's state on a host, as `configured_harnesses` gives it. */
export function harnessState(value: unknown): string {
  if (value === true) return 'ready';
  if (value === false || value === undefined || value === null) return 'not installed';
  return String(value).replace(/-/g, ' ');
}

export function NewSession() {
  const [hosts, setHosts] = useState<Host[] | null>(null);
  const [agents, setAgents] = useState<Agent[]>([]);
  const [hostId, setHostId] = useState('');
  const [agentId, setAgentId] = useState('');
  const [workspace, setWorkspace] = useState('');
  const [title, setTitle] = useState('');
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    Promise.all([api<{ hosts: Host[] }>('/v1/hosts'), api<List<Agent>>('/v1/agents?limit=100')])
      .then(([h, a]) => {
        const online = h.hosts.filter((x) => x.status === 'online');
        setHosts(online);
        setAgents(a.data);
        if (online[0]) setHostId(online[0].host_id);
      })
      .catch((e) => setError((e as Error).message));
  }, []);

  const host = hosts?.find((h) => h.host_id === hostId);
  const usable = agents.filter((a) => harnessState(host?.configured_harnesses?.[a.harness]) === 'ready');
  useEffect(() => {
    if (!usable.some((a) => a.id === agentId)) setAgentId(usable[0]?.id ?? '');
  }, [hostId, agents.length]);

  const create = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const body: Record<string, unknown> = { agent_id: agentId, host_id: hostId, workspace };
      if (title.trim()) body.title = title.trim();
      const s = await post<{ id: string }>('/v1/sessions', body);
      navigate(`/sessions/${s.id}`);
    } catch (err) {
      setError((err as Error).message);
      setBusy(false);
    }
  };

  const reason = !hosts
    ? 'Loading hosts…'
    : hosts.length === 0
      ? 'No host is online: run `omnigent start` on a machine.'
      : !agentId
        ? 'This host has no ready harness.'
        : !workspace
          ? 'Pick a workspace folder.'
          : null;

  return (
    <section class="page" aria-labelledby="new-title">
      <h1 id="new-title">New session</h1>
      <form class="form" onSubmit={create}>
        <label>
          Host
          <select value={hostId} onChange={(e) => setHostId((e.target as HTMLSelectElement).value)} disabled={!hosts?.length}>
            {(hosts ?? []).map((h) => (
              <option key={h.host_id} value={h.host_id}>
                {h.name} (online)
              </option>
            ))}
          </select>
        </label>
        <label>
          Agent
          <select value={agentId} onChange={(e) => setAgentId((e.target as HTMLSelectElement).value)} disabled={!usable.length}>
            {agents.map((a) => {
              const state = harnessState(host?.configured_harnesses?.[a.harness]);
              return (
                <option key={a.id} value={a.id} disabled={state !== 'ready'}>
                  {a.name}
                  {state === 'ready' ? '' : ` (${state})`}
                </option>
              );
            })}
          </select>
        </label>
        <fieldset>
          <legend>Workspace</legend>
          <p class="picked" data-testid="workspace">
            {workspace || 'No folder picked yet'}
          </p>
          {hostId && <FolderPicker key={hostId} hostId={hostId} onPick={setWorkspace} />}
        </fieldset>
        <label>
          Title
          <input value={title} onInput={(e) => setTitle((e.target as HTMLInputElement).value)} placeholder="Optional" />
        </label>
        <Alert error={error} />
        <div class="actions">
          <button class="primary" type="submit" disabled={busy || reason !== null} aria-describedby="create-reason">
            {busy ? 'Creating…' : 'Create session'}
          </button>
          {reason && (
            <span id="create-reason" class="muted">
              {reason}
            </span>
          )}
        </div>
      </form>
    </section>
  );
}

/** A text field with its button; Enter in the field does what the button does. */
function InputAction(props: {
  label: string;
  placeholder: string;
  value: string;
  onValue: (v: string) => void;
  action: string;
  onAction: () => unknown;
  disabled?: boolean;
}) {
  const off = props.disabled || !props.value.trim();
  const act = () => {
    if (!off) void props.onAction();
  };
  return (
    <div class="picker-bar">
      <label class="grow">
        <span class="visually-hidden">{props.label}</span>
        <input
          placeholder={props.placeholder}
          value={props.value}
          onInput={(e) => props.onValue((e.target as HTMLInputElement).value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter') {
              e.preventDefault();
              act();
            }
          }}
        />
      </label>
      <button type="button" onClick={act} disabled={off}>
        {props.action}
      </button>
    </div>
  );
}

function parent(path: string): string {
  const cut = path.replace(/\/+$/, '').lastIndexOf('/');
  return cut <= 0 ? '/' : path.slice(0, cut);
}

function join(dir: string, name: string): string {
  return dir.endsWith('/') ? dir + name : `${dir}/${name}`;
}

function FolderPicker({ hostId, onPick }: { hostId: string; onPick: (path: string) => void }) {
  const [dir, setDir] = useState<string | null>(null);
  const [entries, setEntries] = useState<DirEntry[]>([]);
  const [more, setMore] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const [newName, setNewName] = useState('');
  const [goTo, setGoTo] = useState('');
  const base = `/v1/hosts/${encodeURIComponent(hostId)}`;

  const open = async (path: string) => {
    setError(null);
    try {
      const stat = await api<{ canonical_path?: string | null; type?: string }>(
        `${base}/filesystem/stat?${new URLSearchParams({ path })}`,
      );
      const real = stat.canonical_path || path;
      const list = await api<{ entries: DirEntry[]; has_more: boolean }>(
        `${base}/filesystem?${new URLSearchParams({ path: real, limit: '1000' })}`,
      );
      setDir(real);
      setEntries(list.entries.filter((e) => e.type === 'directory').sort((a, b) => a.name.localeCompare(b.name)));
      setMore(list.has_more);
    } catch (e) {
      setError((e as Error).message);
    }
  };

  useEffect(() => {
    void open('~');
  }, [hostId]);

  const create = async () => {
    if (!dir || !newName.trim()) return;
    setError(null);
    try {
      const made = await post<{ path: string }>(`${base}/directories`, { path: join(dir, newName.trim()) });
      setNewName('');
      await open(made.path);
    } catch (e) {
      setError((e as Error).message);
    }
  };

  return (
    <div class="picker">
      <div class="picker-bar">
        <button type="button" onClick={() => dir && open(parent(dir))} disabled={!dir || dir === '/'} aria-label="Parent folder">
          ↑ Up
        </button>
        <code class="cwd" data-testid="cwd">
          {dir ?? '…'}
        </code>
        <button type="button" class="primary" disabled={!dir} onClick={() => dir && onPick(dir)}>
          Use this folder
        </button>
      </div>
      <InputAction
        label="Go to folder"
        placeholder="Go to folder (a path on the host)"
        value={goTo}
        onValue={setGoTo}
        action="Open"
        onAction={() => open(goTo.trim())}
      />
      <Alert error={error} />
      <ul class="dirs" aria-label="Folders">
        {entries.map((e) => (
          <li key={e.path}>
            <button type="button" class="dir" onClick={() => open(e.path)}>
              {e.name}/
            </button>
          </li>
        ))}
        {entries.length === 0 && dir && <li class="muted">No folders here.</li>}
        {more && <li class="muted">More entries not shown.</li>}
      </ul>
      <InputAction
        label="New folder name"
        placeholder="New folder name"
        value={newName}
        onValue={setNewName}
        action="Create folder"
        onAction={create}
        disabled={!dir}
      />
    </div>
  );
}
