// The server's HTTP API (reference omnigent-server-v1.md §1, §7), as the UI calls it: same origin, JSON,
// errors `{error:{code,message}}` turned into an `ApiError` with the server's message. A 401 anywhere
// means this device is not paired (auth.ts shows the pairing screen).
import { markUnpaired } from './auth';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  let resp: Response;
  try {
    resp = await fetch(path, { ...init, headers: { ...headers, ...(init.headers as object) } });
  } catch (e) {
    throw new ApiError(0, 'network', `cannot reach the server (${(e as Error).message})`);
  }
  const text = await resp.text();
  let body: any = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!resp.ok) {
    const err = body?.error;
    if (resp.status === 401 && !path.startsWith('/v1/pairing/')) markUnpaired();
    throw new ApiError(resp.status, err?.code ?? 'http', err?.message ?? `${resp.status} ${resp.statusText}`);
  }
  return body as T;
}

export const post = <T>(path: string, body: unknown) => api<T>(path, { method: 'POST', body: JSON.stringify(body) });

export interface List<T> {
  data: T[];
  has_more: boolean;
  first_id: string | null;
  last_id: string | null;
}

export interface SessionRow {
  id: string;
  agent_id: string;
  agent_name: string | null;
  status: string;
  created_at: number;
  updated_at: number;
  title: string | null;
  runner_id: string | null;
  host_id: string | null;
  runner_online: boolean | null;
  host_online: boolean | null;
  workspace: string | null;
  archived: boolean;
}

export interface Host {
  host_id: string;
  name: string;
  status: string;
  version?: string | null;
  host_version?: string | null;
  configured_harnesses: Record<string, unknown>;
  runners?: unknown[];
}

export interface Agent {
  id: string;
  name: string;
  description: string;
  harness: string;
}

export interface DirEntry {
  name: string;
  path: string;
  type: string;
}

export const sessionsQuery = (opts: { search?: string; archived?: boolean; limit?: number }) => {
  const q = new URLSearchParams({ limit: String(opts.limit ?? 100), order: 'desc', sort_by: 'updated_at' });
  if (opts.search) q.set('search_query', opts.search);
  if (opts.archived) q.set('include_archived', 'true');
  return `/v1/sessions?${q}`;
};

/** Every item of a session, oldest first, page by page (1,000 at a time). */
export async function allItems<T extends { id: string }>(sessionId: string): Promise<T[]> {
  const items: T[] = [];
  let after: string | null = null;
  for (;;) {
    const q = new URLSearchParams({ order: 'asc', limit: '1000' });
    if (after) q.set('after', after);
    const page: List<T> = await api<List<T>>(`/v1/sessions/${encodeURIComponent(sessionId)}/items?${q}`);
    items.push(...page.data);
    if (!page.has_more || !page.last_id) return items;
    after = page.last_id;
  }
}

/** "just now", "5 min ago", "3 h ago", "2 d ago" for an epoch-seconds time. */
export function ago(epochSeconds: number, now = Date.now() / 1000): string {
  const s = Math.max(0, Math.round(now - epochSeconds));
  if (s < 45) return 'just now';
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}
