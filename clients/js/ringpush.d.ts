// Type declarations for ringpush.js (the JSON protocol client; see PROTOCOL.md).

/** Close codes the node sends that the client acts on. */
export declare const CloseCode: Readonly<{
  GOING_AWAY: 1001;
  SERVICE_RESTART: 1012;
  REPLACED: 4001;
  RECONNECT_ELSEWHERE: 4002;
  TOKEN_EXPIRED: 4003;
}>;

/** Codes after which the client reconnects at once (within `nowJitterMs`): 1001, 1012, 4002. */
export declare const RECONNECT_NOW_CODES: readonly number[];

/** The `sessionStorage` key holding this tab's id. */
export declare const TAB_STORAGE_KEY: "ringpush.tab";

export interface Backoff {
  /** First reconnect window, ms. */
  baseMs: number;
  /** Largest reconnect window, ms. */
  ceilingMs: number;
}

/** Full jitter: uniform in [0, min(ceilingMs, baseMs * 2^attempt)). */
export declare function backoffDelay(attempt: number, backoff: Backoff, random?: () => number): number;
/** The upper bound of `backoffDelay` for `attempt`. */
export declare function backoffWindow(attempt: number, backoff: Backoff): number;
/** This tab's id, kept in `sessionStorage` (made and stored when missing). */
export declare function tabId(storage?: Storage | null, key?: string): string;
/** Makes, stores and returns a new tab id. */
export declare function newTabId(storage?: Storage | null, key?: string): string;
/** Whether a JWT's `exp` has passed (a non-JWT is taken as valid). */
export declare function tokenExpired(token: string, nowMs?: number): boolean;
/** A JWT's `exp` in seconds since the epoch, or null for a token that is not a readable JWT. */
export declare function tokenExp(token: string): number | null;

export type State = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface StateDetail {
  /** The close code that ended the last connection (0: no close frame, e.g. dead or refused). */
  code?: number;
  reason?: string;
  /** With "reconnecting": the delay before the next attempt, ms. */
  delayMs?: number;
  /** Failed attempts since the last stable connection. */
  attempt?: number;
  /** With "open": this tab's id. */
  tab?: string;
  why?: string;
}

export interface ChannelMessage {
  channel: string;
  /** The channel's offset of this message (+1 per publish). */
  offset: number;
  epoch: string | null;
  /** A string for a UTF-8 payload, bytes otherwise. */
  data: string | Uint8Array;
}

/** A message sent to the session (`POST /send/<session>`): no channel, no offset. */
export interface SessionMessage {
  channel: null;
  session: string | null;
  data: string | Uint8Array;
}

export type Message = ChannelMessage | SessionMessage;

export interface Subscribed {
  op: "subscribed";
  channel: string;
  epoch: string;
  offset: number;
  recovered: boolean;
}

export interface RecoveryFailed {
  channel: string;
  /** What the client asked to resume from. */
  since: { epoch: string; offset: number };
  /** Where the channel is now: reload your state, then live messages follow `offset`. */
  epoch: string;
  offset: number;
  /**
   * `"gap"` when the node reported a loss on a live subscription (`{"op":"gap"}`, nodes
   * joined through Redis): messages up to `offset` of `epoch` may never arrive, and `since`
   * is what this client had (its `epoch` and `offset` may be null before any message).
   * Absent for a resume the node could not replay.
   */
  reason?: "gap";
}

export interface Published {
  op: "published";
  id: number;
  channel: string;
  epoch: string;
  offset: number;
}

export declare class RingpushError extends Error {
  /** The node's error code (400, 403, 404, 409, 413, 429, 503), or 0 for a local failure. */
  code: number;
  reason: string;
  command?: string;
}

export interface Options extends Partial<Backoff> {
  /** A fixed token (JWT). On expiry (4003) the client stops: use `getToken` to go on. */
  token?: string;
  /** Called for a token before connecting, and again after a 4003 or when the JWT's exp passed. */
  getToken?: (context: { tab: string; reason: string }) => string | Promise<string>;
  /** Where the token travels: the subprotocol (default; the node answers `ringpush.v1`) or `?token=`. */
  tokenIn?: "protocol" | "query";
  /** With `--auth off` only: the session sent as `?session=` together with `?tab=`. */
  session?: string;
  /** Overrides the tab id kept in `sessionStorage`. */
  tab?: string;
  /** Channels subscribed at once (and after every reconnect, resuming). */
  channels?: string[];
  /** A connection up this long resets the backoff (default 10000 ms). */
  resetAfterMs?: number;
  /** "Reconnect now" closes (1001, 1012, 4001, 4002) wait uniform [0, nowJitterMs) (default 250). */
  nowJitterMs?: number;
  /**
   * The longest silence of the node on a healthy connection (default 45000 ms: with the
   * node's defaults it pings after 30 s, then every 45 s, which is --idle-timeout minus
   * --ping-interval).
   */
  pingIntervalMs?: number;
  /** Extra silence allowed past the ping interval before the connection is declared dead (default 10000). */
  pingGraceMs?: number;
  /**
   * With `getToken`: the live connection's token is refreshed (`refresh` command) this long
   * before its JWT `exp` (default 30000 ms; 0: never). A token living shorter is left to
   * expire, and the 4003 that follows asks getToken.
   */
  refreshBeforeMs?: number;
  /** An attempt not open after this is abandoned (default 10000 ms). */
  connectTimeoutMs?: number;
  /** A WebSocket constructor, for Node 20 without `--experimental-websocket` (e.g. `ws`). */
  WebSocket?: typeof WebSocket;
  /** Where the tab id is kept (default `globalThis.sessionStorage`; null: nowhere). */
  storage?: Storage | null;
  /** Random source in [0, 1), for tests. */
  random?: () => number;
  onState?: (state: State, detail: StateDetail) => void;
  onMessage?: (message: Message) => void;
  onSubscribed?: (subscribed: Omit<Subscribed, "op">) => void;
  onRecoveryFailed?: (failure: RecoveryFailed) => void;
  onError?: (error: Error) => void;
}

export interface Events {
  state: (state: State, detail: StateDetail) => void;
  message: (message: Message) => void;
  subscribed: (subscribed: Omit<Subscribed, "op">) => void;
  recovery_failed: (failure: RecoveryFailed) => void;
  error: (error: Error) => void;
}

export declare class Client {
  readonly state: State;
  /** This connection's tab id. */
  readonly tab: string;
  on<E extends keyof Events>(event: E, handler: Events[E]): () => void;
  subscribe(channel: string): Promise<Subscribed>;
  unsubscribe(channel: string): Promise<void>;
  publish(channel: string, data: string | ArrayBuffer | ArrayBufferView): Promise<Published>;
  /** Asks getToken for a fresh token and sends `refresh`; resolves with `{op:"refreshed", exp}`. */
  refresh(): Promise<{ op: "refreshed"; id: number; exp: number }>;
  close(): void;
}

/** Opens a client (it connects at once and reconnects until `close`). */
export declare function connect(url: string, options?: Options): Client;
