import type { ServerFeature } from './feature.js';
import { observabilityFeature } from './observability/index.js';
import { meshFeature } from './mesh/index.js';
import { opsFeature } from './ops/index.js';

/** The features every server runs, in start order. */
export const SERVER_FEATURES: readonly ServerFeature[] = [meshFeature, observabilityFeature, opsFeature];
