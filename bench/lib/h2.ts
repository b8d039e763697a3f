/**
 * node:http2 with tuned windows, for bench/mux-compare.ts: both sides announce the same large
 * initial stream window in their SETTINGS and raise their connection window, so that flow control
 * does not bound bulk throughput on loopback (Node's defaults, 64 KiB each, would), and allow the
 * session enough memory to hold what those windows let in.
 */
import type { ClientSessionOptions, SecureServerOptions } from 'node:http2';

const MIB = 1024 * 1024;

/** Per-stream initial window (SETTINGS_INITIAL_WINDOW_SIZE), both sides: meshlink's largest auto-tuned window. */
export const H2_STREAM_WINDOW = 4 * MIB;
/** Connection window, both sides (setLocalWindowSize once the session is up). */
export const H2_CONNECTION_WINDOW = 128 * MIB;

export const h2Settings = { initialWindowSize: H2_STREAM_WINDOW, maxFrameSize: 64 * 1024 } as const;

/** MB of memory a session may hold before nghttp2 refuses more (ENHANCE_YOUR_CALM); default 10. */
const maxSessionMemory = 512;

export const h2ServerOptions: Pick<SecureServerOptions, 'settings' | 'maxSessionMemory'> = { settings: h2Settings, maxSessionMemory };
export const h2ClientOptions: Pick<ClientSessionOptions, 'settings' | 'maxSessionMemory'> = { settings: h2Settings, maxSessionMemory };
