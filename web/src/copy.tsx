import { useState } from 'preact/hooks';

/** A button that copies `text` to the clipboard and says so for a moment. */
export function CopyButton({ text, label }: { text: string; label: string }) {
  const [done, setDone] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(text);
      setDone(true);
      setTimeout(() => setDone(false), 1500);
    } catch {
      setDone(false);
    }
  };
  return (
    <button type="button" class="small" aria-label={label} onClick={copy}>
      {done ? 'Copied' : 'Copy'}
    </button>
  );
}
