import { describe, expect, it } from 'vitest';
import { HandlerRegistry } from '../../src/protocol/handler-registry.js';

type Args = { greet: [name: string]; count: [n: number, by: number] };

describe('HandlerRegistry', () => {
  it('runs the handlers of a key in registration order; one that throws does not stop the next', () => {
    const r = new HandlerRegistry<Args>();
    const seen: string[] = [];
    const errors: unknown[] = [];
    r.on('greet', (name) => seen.push(`1 ${name}`));
    r.on('greet', () => {
      throw new Error('boom');
    });
    r.on('greet', (name) => seen.push(`3 ${name}`));
    r.on('count', (n, by) => seen.push(`count ${n + by}`));
    expect(r.emit('greet', ['ada'], (e) => errors.push(e))).toBe(3);
    expect(seen).toEqual(['1 ada', '3 ada']);
    expect(errors).toHaveLength(1);
    expect(r.emit('count', [1, 2], () => {})).toBe(1);
    expect(seen.at(-1)).toBe('count 3');
  });

  it('removal takes out only that handler', () => {
    const r = new HandlerRegistry<Args>();
    const seen: number[] = [];
    const off = r.on('count', (n) => seen.push(n));
    r.on('count', (n) => seen.push(-n));
    off();
    r.emit('count', [5, 0], () => {});
    expect(seen).toEqual([-5]);
    expect(r.has('greet')).toBe(false);
  });

  it('keys() lists the keys that have a handler, in first-registration order', () => {
    const r = new HandlerRegistry<Args>();
    expect(r.keys()).toEqual([]);
    const off = r.on('count', () => {});
    r.on('greet', () => {});
    expect(r.keys()).toEqual(['count', 'greet']);
    off();
    expect(r.keys()).toEqual(['greet']);
  });

  it('exclusive: a second handler for a key is refused, and allowed again after removal', () => {
    const r = new HandlerRegistry<Args>({ exclusive: true });
    const off = r.on('greet', () => {});
    expect(() => r.on('greet', () => {})).toThrow(/already registered/);
    off();
    expect(() => r.on('greet', () => {})).not.toThrow();
  });

  it('emitSerial awaits each handler before the next and counts rejections', async () => {
    const r = new HandlerRegistry<Args>();
    const seen: string[] = [];
    r.on('greet', async (name) => {
      await new Promise((res) => setTimeout(res, 20));
      seen.push(`slow ${name}`);
    });
    r.on('greet', async () => {
      throw new Error('rejected');
    });
    r.on('greet', (name) => void seen.push(`fast ${name}`));
    const errors: unknown[] = [];
    expect(await r.emitSerial('greet', ['bo'], (e) => errors.push(e))).toEqual({ handled: 3, failed: 1 });
    expect(seen).toEqual(['slow bo', 'fast bo']);
    expect((errors[0] as Error).message).toBe('rejected');
  });
});
