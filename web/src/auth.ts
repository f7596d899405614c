// Who this browser is to the server (issue 13): `GET /v1/info`'s `auth` (role, device), and whether the
// server refused it (any 401 → the "not paired" screen). One small store, read with `useAuth()`.
import { useEffect, useState } from 'preact/hooks';

export type Role = 'viewer' | 'driver' | 'host' | 'owner';

export interface AuthState {
  /** `null` until `/v1/info` answered (or when it could not be read). */
  role: Role | null;
  device: { id: string; name: string } | null;
  /** The server answered 401: this device is not (or no longer) paired. */
  unpaired: boolean;
}

let state: AuthState = { role: null, device: null, unpaired: false };
const listeners = new Set<() => void>();

function set(patch: Partial<AuthState>) {
  state = { ...state, ...patch };
  for (const l of listeners) l();
}

/** Any request of the UI answered 401. */
export function markUnpaired() {
  if (!state.unpaired) set({ unpaired: true });
}

/** Read `/v1/info` again (at start, and after pairing). */
export async function refreshAuth(): Promise<void> {
  try {
    const resp = await fetch('/v1/info', { headers: { accept: 'application/json' }, cache: 'no-store' });
    if (resp.status === 401) return markUnpaired();
    if (!resp.ok) return;
    const info = await resp.json();
    const auth = info?.auth;
    // A server without `auth` (older, or Python) serves its owner only.
    const role = auth ? (auth.role ?? null) : 'owner';
    set({ role, device: auth?.device ?? null, unpaired: Boolean(auth?.required) && role === null });
  } catch {
    // Unreachable: the screens say so.
  }
}

export function useAuth(): AuthState {
  const [s, setS] = useState(state);
  useEffect(() => {
    const l = () => setS(state);
    listeners.add(l);
    l();
    return () => void listeners.delete(l);
  }, []);
  return s;
}

/** Whether `role` may send messages, interrupt and create sessions. */
export const canDrive = (role: string | null | undefined) => role === 'driver' || role === 'owner';
