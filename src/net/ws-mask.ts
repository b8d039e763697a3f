/**
 * The masking key of the WebSocket frames meshlink sends as a client, on connections where masking
 * protects nothing: the agent's wss connection (TLS end to end) and the CLI's connection to the admin
 * unix socket.
 *
 * RFC 6455 §5.3 has clients mask every frame with an unpredictable 32-bit key. The mask exists for
 * intermediaries that parse cleartext HTTP: without it, script in a browser could choose bytes that a
 * transparent proxy mistakes for a request of its own and caches (§10.3). Inside TLS no intermediary
 * sees the bytes, a unix socket has none, and meshlink's clients run no untrusted script. Frames still
 * carry the MASK bit and a key, as every server expects; the key is zero, so XOR leaves the payload
 * as it is. ws then neither copies nor XORs the payload of a message: measured over wss on loopback
 * with 256 KiB writes, the sender's CPU per MiB was 2.95 ms with random keys and 1.66 ms with the zero
 * key (`npm run bench:mux-cpu`, BENCHMARKS.md).
 *
 * This is the `generateMask` option of ws, documented for exactly this use. Plain ws:// connections
 * (tests, never a deployment: enrollment pins a CA and the agent dials wss) keep random keys.
 */
export function zeroMaskingKey(mask: Buffer): void {
  mask.fill(0);
}
