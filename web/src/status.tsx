/** What a status reads as: `waiting` is a question of the agent's waiting for an answer. */
export function statusLabel(status: string): string {
  return status === 'waiting' ? 'waiting for approval' : status;
}

export function StatusBadge({ status }: { status: string }) {
  return <span class={`badge status-${status}`}>{statusLabel(status)}</span>;
}

/** An error line, announced to screen readers; nothing when there is no error. */
export function Alert({ error }: { error: string | null }) {
  return error ? (
    <p class="error" role="alert">
      {error}
    </p>
  ) : null;
}
