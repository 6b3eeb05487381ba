"""Local training of the partitioned early-exit network (``models.partitioned``) for FL rounds.

One Keras model is built once and reused for every client: load the global weights, zero the
Adam state (a fresh local optimizer, as FedAvg assumes), run a fixed number of mini-batches in
one ``tf.function`` call, read the weights back. A ``model.fit`` per client and round would
spend more time setting up than training on a station's few hundred sessions.
"""

from __future__ import annotations

import numpy as np

from models.model_config import ModelConfig
from models.study.federation import Client, NDArrays


class EarlyExitTrainer:
    """``LocalTrainer`` for the early-exit network: ``steps`` batches of ``batch_size`` rows."""

    def __init__(self, config: ModelConfig, seed: int, steps: int, batch_size: int) -> None:
        import tensorflow as tf

        from models.training import new_model

        self.model = new_model(config, seed)
        self.model.optimizer.build(self.model.trainable_variables)
        self.steps, self.batch_size, self.seed = steps, batch_size, seed
        self._state = [
            v for v in self.model.optimizer.variables if not v.path.endswith("learning_rate")
        ]
        model, optimizer = self.model, self.model.optimizer

        @tf.function
        def local_steps(xb: tf.Tensor, zb: tf.Tensor) -> tf.Tensor:
            loss = tf.constant(0.0)
            for i in tf.range(tf.shape(xb)[0]):
                z = zb[i]
                with tf.GradientTape() as tape:
                    outputs = model(xb[i], training=True)
                    loss = model.compute_loss(x=xb[i], y=(z, z, z), y_pred=outputs, training=True)
                grads = tape.gradient(loss, model.trainable_variables)
                optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        self._local_steps = local_steps

    def initial_weights(self) -> NDArrays:
        from models.partitioned import weights_of

        return weights_of(self.model)

    def kernel_index(self, path: str = "edge_dense_0/kernel") -> int:
        """Position of a variable in the weight list (e.g. the station rows' first kernel)."""
        return [v.path for v in self.model.weights].index(path)

    def __call__(self, weights: NDArrays, client: Client, round_index: int) -> NDArrays:
        from models.partitioned import set_weights, weights_of

        set_weights(self.model, weights)
        for v in self._state:
            v.assign(np.zeros(v.shape, v.dtype))
        rng = np.random.default_rng([self.seed, round_index, client.num_examples])
        rows = _cycled_rows(client.num_examples, self.steps * self.batch_size, rng)
        shape = (self.steps, self.batch_size)
        self._local_steps(client.x[rows].reshape(*shape, -1), client.z[rows].reshape(shape))
        return weights_of(self.model)

    def predict_means(self, weights: NDArrays, x: np.ndarray) -> np.ndarray:
        """Standardised predicted means per exit, (n, 3): edge, fog, cloud."""
        from models.partitioned import set_weights

        set_weights(self.model, weights)
        outputs = self.model.predict(x, batch_size=2048, verbose=0)
        return np.column_stack([np.asarray(o)[:, 0] for o in outputs])


def _cycled_rows(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` row indices: shuffled passes over ``n`` rows, repeated as often as needed."""
    passes = -(-count // n)
    return np.concatenate([rng.permutation(n) for _ in range(passes)])[:count]
