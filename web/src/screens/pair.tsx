// The pairing page at `/pair#code=XXXX-XXXX&session=ID` (issue 13), what `omnigent share` prints and its QR
// code carries. The code is read from the fragment (never sent to a server log or a Referer) and the URL is
// replaced at once, so it never stays in the history; `POST /v1/pairing/peek` says what the code allows,
// Confirm claims it (`client: "browser"`: the server sets an HttpOnly cookie, the page never sees a token)
// and lands on the session, or the list.
import { useEffect, useState } from 'preact/hooks';
import { ApiError, post } from '../api';
import { refreshAuth } from '../auth';
import { navigate } from '../router';

interface Fragment {
  code: string;
  session: string | null;
}

let taken: Fragment | null = null;

/** Read the code from the fragment and drop it from the address bar and history (called before rendering). */
export function takePairingFragment() {
  if (location.pathname !== '/pair' || !location.hash) return;
  const p = new URLSearchParams(location.hash.slice(1));
  const code = (p.get('code') ?? '').trim().toUpperCase();
  const session = p.get('session');
  history.replaceState(null, '', '/pair');
  if (code) taken = { code, session: session && /^[A-Za-z0-9_.-]{1,128}$/.test(session) ? session : null };
}

interface Peek {
  role: string;
  session_id: string | null;
  expires_at: number;
  name?: string;
}

const ROLE_TEXT: Record<string, string> = {
  viewer: 'You will be able to watch sessions.',
  driver: 'You will be able to watch sessions and send messages.',
  host: 'This code pairs a host (a computer that runs sessions); use `omnigent login` on that computer instead.',
  owner: 'You will own this server: watch, drive, pair and revoke devices.',
};

/** "Pixel 8 (Chrome)"-like name from the user agent. */
export function deviceName(ua = navigator.userAgent): string {
  const browser = /Edg\//.test(ua)
    ? 'Edge'
    : /Firefox\//.test(ua)
      ? 'Firefox'
      : /Chrome\//.test(ua)
        ? 'Chrome'
        : /Safari\//.test(ua)
          ? 'Safari'
          : 'Browser';
  const android = /Android [\d.]+; ([^;)]+)/.exec(ua)?.[1]?.replace(/ Build\/.*/, '').trim();
  const device =
    android && android !== 'K'
      ? android
      : /iPhone/.test(ua)
        ? 'iPhone'
        : /iPad/.test(ua)
          ? 'iPad'
          : /Android/.test(ua)
            ? 'Android'
            : /Mac OS X/.test(ua)
              ? 'Mac'
              : /Windows/.test(ua)
                ? 'Windows'
                : /Linux/.test(ua)
                  ? 'Linux'
                  : '';
  return (device ? `${device} (${browser})` : browser).slice(0, 64);
}

function explain(e: unknown): string {
  if (e instanceof ApiError) {
    if (e.code === 'pairing_code_invalid' || e.status === 404)
      return 'This code is wrong, used or expired. Ask the owner for a new one (`omnigent share`).';
    return e.message;
  }
  return (e as Error).message;
}

export function Pair() {
  const [code, setCode] = useState(taken?.code ?? '');
  const [session] = useState(taken?.session ?? null);
  const [peek, setPeek] = useState<Peek | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [name, setName] = useState(deviceName);
  const [busy, setBusy] = useState(false);

  const look = async (c: string) => {
    setError(null);
    setPeek(null);
    try {
      const p = await post<Peek>('/v1/pairing/peek', { code: c });
      setPeek(p);
      if (p.name) setName(p.name);
    } catch (e) {
      setError(explain(e));
    }
  };
  useEffect(() => {
    taken = null;
    if (code) void look(code);
  }, []);

  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      const r = await post<{ session_id: string | null }>('/v1/pairing/claim', {
        code,
        name: name.trim() || deviceName(),
        client: 'browser',
      });
      await refreshAuth();
      const to = r?.session_id ?? peek?.session_id ?? session;
      navigate(to ? `/sessions/${encodeURIComponent(to)}` : '/');
    } catch (e) {
      setError(explain(e));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section class="page pair" aria-labelledby="pair-title">
      <h1 id="pair-title">Pair this device</h1>
      {!peek && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            if (code.trim()) void look(code.trim().toUpperCase());
          }}
        >
          <label for="pair-code">Pairing code (from `omnigent share`)</label>
          <input
            id="pair-code"
            autocomplete="off"
            value={code}
            onInput={(e) => setCode((e.target as HTMLInputElement).value.toUpperCase())}
          />
          <button type="submit" disabled={!code.trim()}>
            Check
          </button>
        </form>
      )}
      {peek && (
        <form
          onSubmit={(e) => {
            e.preventDefault();
            void confirm();
          }}
        >
          <p data-testid="pair-role" data-role={peek.role}>
            {ROLE_TEXT[peek.role] ?? `Role: ${peek.role}.`}
          </p>
          <label for="device-name">This device’s name</label>
          <input id="device-name" maxLength={64} value={name} onInput={(e) => setName((e.target as HTMLInputElement).value)} />
          <button type="submit" class="primary" disabled={busy || peek.role === 'host'}>
            Confirm
          </button>
        </form>
      )}
      {error && (
        <p class="entry error" role="alert">
          {error}
        </p>
      )}
    </section>
  );
}

/** What every screen gives way to once the server answered 401. */
export function Unpaired() {
  return (
    <section class="page" aria-labelledby="unpaired-title" data-testid="unpaired">
      <h1 id="unpaired-title">This device is not paired</h1>
      <p>
        Ask the owner to run <code>omnigent share</code> on the server’s machine and open the link (or scan the QR
        code) it prints. If you have a code, <a href="/pair">enter it here</a>.
      </p>
    </section>
  );
}
