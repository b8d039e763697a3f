/**
 * An emulated WAN link for bench/wan.ts, in user space, because this machine's kernel has no
 * sch_netem (`tc qdisc add … netem` answers "Specified qdisc kind is unknown").
 *
 * Each end host has a TUN device whose packets socat carries, one IP packet per UDP datagram, to
 * this process in the namespace between them; it forwards every datagram to the other end as netem
 * `delay D rate R limit L` would: per direction, packets are serialised one after another at R
 * bits/s, each leaves D ms after its last bit went out, and a packet that finds L packets already
 * held in that direction (waiting, serialising or in flight) is dropped (drop-tail, as netem's
 * `limit`, default 1000). TCP runs end to end through it, unsplit: its congestion control sees the
 * queue, the loss and the delay of a real bottleneck.
 *
 * Timers fire to the millisecond at best, so a packet leaves up to ~1 ms late; the bench measures
 * the idle round trip through the link and reports queueing against that, not against 2 × D.
 *
 * argv: <ip of side A> <ip of side B> <port> <delay ms> <rate Mbit/s> <limit packets>
 * Both ends' socat listen on <port> at their side's address; this process binds <port> on both
 * of its own addresses (given by env LINK_A and LINK_B). It prints "ready" and exits when stdin ends.
 * On SIGUSR2 it writes its counters to stderr as one JSON line.
 */
import { createSocket, type Socket } from 'node:dgram';

const [sideA, sideB, portArg, delayArg, rateArg, limitArg] = process.argv.slice(2);
const PORT = Number(portArg);
const DELAY_MS = Number(delayArg);
const RATE_BPS = Number(rateArg) * 1e6;
const LIMIT = Number(limitArg);
if (!sideA || !sideB || !(PORT > 0) || !(DELAY_MS >= 0) || !(RATE_BPS > 0) || !(LIMIT > 0)) {
  process.stderr.write('usage: wan-link <side A ip> <side B ip> <port> <delay ms> <rate Mbit/s> <limit packets>\n');
  process.exit(2);
}

interface Held {
  data: Buffer;
  /** When its last bit has been serialised onto the link plus the propagation delay, ms. */
  dueAt: number;
}

/** One direction of the link: a FIFO of held packets, a serialiser clock, one timer. */
class Direction {
  readonly #queue: Held[] = [];
  #head = 0;
  /** When the serialiser is free again, ms (performance.now()). */
  #busyUntil = 0;
  #timer: NodeJS.Timeout | null = null;
  forwarded = 0;
  dropped = 0;
  bytes = 0;
  maxHeld = 0;

  constructor(
    private readonly out: Socket,
    private readonly toHost: string,
  ) {}

  push(data: Buffer): void {
    const held = this.#queue.length - this.#head;
    if (held >= LIMIT) {
      this.dropped++;
      return;
    }
    const now = performance.now();
    // Serialisation: the packet starts when the link is free and takes its size over the rate
    // (socat's UDP datagram is the IP packet; the encapsulation is not counted).
    const start = Math.max(now, this.#busyUntil);
    this.#busyUntil = start + (data.length * 8 * 1000) / RATE_BPS;
    this.#queue.push({ data, dueAt: this.#busyUntil + DELAY_MS });
    if (held + 1 > this.maxHeld) this.maxHeld = held + 1;
    if (this.#timer === null) this.#arm();
  }

  #arm(): void {
    const next = this.#queue[this.#head];
    if (!next) return;
    this.#timer = setTimeout(() => this.#release(), Math.max(0, next.dueAt - performance.now()));
  }

  #release(): void {
    this.#timer = null;
    const now = performance.now();
    while (this.#head < this.#queue.length && this.#queue[this.#head]!.dueAt <= now + 0.5) {
      const { data } = this.#queue[this.#head++]!;
      this.forwarded++;
      this.bytes += data.length;
      this.out.send(data, PORT, this.toHost);
    }
    // Compact now and then instead of shifting per packet.
    if (this.#head > 4096) {
      this.#queue.splice(0, this.#head);
      this.#head = 0;
    }
    this.#arm();
  }
}

function bind(address: string): Promise<Socket> {
  const socket = createSocket({ type: 'udp4', recvBufferSize: 8 << 20, sendBufferSize: 8 << 20 });
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind(PORT, address, () => resolve(socket));
  });
}

const linkA = process.env.LINK_A;
const linkB = process.env.LINK_B;
if (!linkA || !linkB) {
  process.stderr.write('wan-link: LINK_A and LINK_B (this process’s addresses toward A and B) must be set\n');
  process.exit(2);
}
const towardA = await bind(linkA);
const towardB = await bind(linkB);
const aToB = new Direction(towardB, sideB);
const bToA = new Direction(towardA, sideA);
// Only the two ends' own datagrams are forwarded.
towardA.on('message', (data, rinfo) => {
  if (rinfo.address === sideA && rinfo.port === PORT) aToB.push(data);
});
towardB.on('message', (data, rinfo) => {
  if (rinfo.address === sideB && rinfo.port === PORT) bToA.push(data);
});

const counters = (): string =>
  JSON.stringify({
    aToB: { forwarded: aToB.forwarded, dropped: aToB.dropped, bytes: aToB.bytes, maxHeld: aToB.maxHeld },
    bToA: { forwarded: bToA.forwarded, dropped: bToA.dropped, bytes: bToA.bytes, maxHeld: bToA.maxHeld },
  });
process.on('SIGUSR2', () => process.stderr.write(`${counters()}\n`));
process.stdin.on('end', () => {
  towardA.close();
  towardB.close();
  process.exit(0);
});
process.stdin.resume();
process.stdout.write('ready\n');
