// A small markdown renderer that builds Preact nodes, never HTML strings: every character of the source ends
// up in a text node (escaped by the DOM), so `<img src=x onerror=…>` or `<script>` from a model or a user is
// shown as text. Links keep their href only for http(s) and mailto; any other scheme (javascript:, data:, …)
// renders as plain text. Supported: fenced code blocks (with a copy button), headings, lists, quotes,
// paragraphs, inline code, bold, italic, links.

import type { ComponentChildren, VNode } from 'preact';
import { CopyButton } from './copy';

const SAFE_URL = /^(https?:\/\/|mailto:)/i;

/** The href a link may have, or null when its scheme is not allowed. */
export function safeHref(url: string): string | null {
  const trimmed = url.trim();
  return SAFE_URL.test(trimmed) ? trimmed : null;
}

const INLINE =
  /(`+)([\s\S]*?[^`])\1(?!`)|\*\*([\s\S]+?)\*\*|__([\s\S]+?)__|\*([^\s*][^*]*?)\*|\b_([^\s_][^_]*?)_\b|\[([^\]\n]*)\]\(([^)\s]*)\)|(https?:\/\/[^\s<>()]+[^\s<>().,;:!?'"])/;

export function inline(text: string): ComponentChildren[] {
  const out: ComponentChildren[] = [];
  let rest = text;
  while (rest.length > 0) {
    const m = INLINE.exec(rest);
    if (!m) {
      out.push(rest);
      break;
    }
    if (m.index > 0) out.push(rest.slice(0, m.index));
    if (m[2] !== undefined) out.push(<code>{m[2]}</code>);
    else if (m[3] !== undefined || m[4] !== undefined) out.push(<strong>{inline(m[3] ?? m[4])}</strong>);
    else if (m[5] !== undefined || m[6] !== undefined) out.push(<em>{inline(m[5] ?? m[6])}</em>);
    else if (m[7] !== undefined) {
      const href = safeHref(m[8]);
      out.push(
        href ? (
          <a href={href} target="_blank" rel="noopener noreferrer nofollow">
            {inline(m[7])}
          </a>
        ) : (
          m[0]
        ),
      );
    } else if (m[9] !== undefined) {
      out.push(
        <a href={m[9]} target="_blank" rel="noopener noreferrer nofollow">
          {m[9]}
        </a>,
      );
    }
    rest = rest.slice(m.index + m[0].length);
  }
  return out;
}

const FENCE = /^\s{0,3}(```+|~~~+)\s*([\w+-]*)/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*)$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}\d{1,9}[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;

export function Markdown({ text }: { text: string }): VNode {
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  const blocks: VNode[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      const code: string[] = [];
      i++;
      while (i < lines.length && !lines[i].trimStart().startsWith(fence[1])) code.push(lines[i++]);
      i++;
      blocks.push(<CodeBlock code={code.join('\n')} lang={fence[2]} />);
      continue;
    }
    if (line.trim() === '') {
      i++;
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      const level = Math.min(6, heading[1].length + 2);
      const Tag = `h${level}` as 'h3';
      blocks.push(<Tag>{inline(heading[2])}</Tag>);
      i++;
      continue;
    }
    const list = BULLET.test(line) ? BULLET : NUMBERED.test(line) ? NUMBERED : null;
    if (list) {
      const items: VNode[] = [];
      for (let m = list.exec(lines[i]); m && i < lines.length; m = list.exec(lines[++i] ?? '')) {
        items.push(<li>{inline(m[1])}</li>);
      }
      blocks.push(list === BULLET ? <ul>{items}</ul> : <ol>{items}</ol>);
      continue;
    }
    if (QUOTE.test(line)) {
      const quoted: string[] = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])![1]);
      blocks.push(
        <blockquote>
          <Markdown text={quoted.join('\n')} />
        </blockquote>,
      );
      continue;
    }
    const para: string[] = [line];
    i++;
    while (i < lines.length && lines[i].trim() !== '' && ![FENCE, HEADING, BULLET, NUMBERED, QUOTE].some((re) => re.test(lines[i]))) {
      para.push(lines[i++]);
    }
    blocks.push(<p>{inline(para.join('\n'))}</p>);
  }
  return <div class="md">{blocks}</div>;
}

function CodeBlock({ code, lang }: { code: string; lang: string }) {
  return (
    <div class="code">
      <div class="code-bar">
        <span>{lang || 'code'}</span>
        <CopyButton text={code} label="Copy code" />
      </div>
      <pre>
        <code>{code}</code>
      </pre>
    </div>
  );
}
