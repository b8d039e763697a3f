import { MeshlinkError } from '../../errors.js';
import type { RunningOperation } from '../../admin-api/routes.js';
import type { MuxStream } from '../../protocol/stream.js';

/**
 * The streaming operations running now (exec, logs, cp, tunnels, actions), for `ops.list` and
 * `ops.end` (`server ops list|end`, the console's Operations page). In memory only: an operation lives
 * as long as its operator's WebSocket and its agent stream, neither of which survives the server.
 * An operation's id is its audit record's id, so a listing and the audit log name it alike.
 *
 * Bytes are the agent stream's own counters (data written toward the node, data received from it),
 * read when listed: nothing is counted on the data path for this.
 */

export interface RunningEntry {
  /** The agent stream, once open (before that the operation is still reaching the node). */
  stream: MuxStream | null;
}

interface Tracked {
  readonly view: Omit<RunningOperation, 'toNode' | 'fromNode'>;
  readonly entry: RunningEntry;
  /** Ends the operation on behalf of `by` (the operator's CLI command gets ML_ERR_OPS_ENDED). */
  readonly end: (by: string) => void;
}

export class RunningOperations {
  readonly #ops = new Map<number, Tracked>();

  /** Tracks an operation until `done` is called; `end` is how another operator stops it. */
  add(view: Tracked['view'], end: (by: string) => void): { entry: RunningEntry; done(): void } {
    const entry: RunningEntry = { stream: null };
    this.#ops.set(view.id, { view, entry, end });
    return { entry, done: () => void this.#ops.delete(view.id) };
  }

  /** Oldest first. */
  list(): RunningOperation[] {
    return [...this.#ops.values()].map((t) => this.#show(t));
  }

  /** Ends operation `id` for `by`: the agent's stream is reset, the operator's command fails with ML_ERR_OPS_ENDED. */
  end(id: number, by: string): RunningOperation {
    const t = this.#ops.get(id);
    if (!t) throw new MeshlinkError('ML_ERR_OPS_OPERATION_NOT_FOUND', `no running operation has the id ${id} (it may have ended already)`);
    const shown = this.#show(t);
    t.end(by);
    return shown;
  }

  get size(): number {
    return this.#ops.size;
  }

  #show(t: Tracked): RunningOperation {
    return { ...t.view, toNode: t.entry.stream?.bytesWritten ?? 0, fromNode: t.entry.stream?.bytesReceived ?? 0 };
  }
}
