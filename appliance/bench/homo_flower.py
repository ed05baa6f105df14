"""Flower's side of `python -m appliance.bench homo`: FedAvg of the same NumPy logistic
regression on the same parties' rows, in Flower's simulation engine (Ray), one process.

Run by the bench with the Flower venv's Python (`make flower-venv`), as a file:

    build/flower-venv/bin/python appliance/bench/homo_flower.py DATA.npz ROUNDS PARAMS_JSON

It prints one line, ``RESULT {json}``: the wall time of the whole simulation (Ray's start
included), of the rounds alone (first fit to last evaluation), CPU time, and the final
model's accuracy on the pooled rows. The local training is the appliance's own
``SoftmaxLR.fit`` (imported from this repository), so both engines run the same arithmetic.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    # the module by its path: importing the package would register the operator, which
    # needs the appliance's own dependencies (pyarrow), absent from this venv
    import importlib.util

    import numpy as np
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    spec = importlib.util.spec_from_file_location(
        "fl_models", ROOT / "appliance" / "operators" / "fl" / "models.py")
    assert spec is not None and spec.loader is not None
    fl_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fl_models)
    SoftmaxLR, evaluate = fl_models.SoftmaxLR, fl_models.evaluate

    data = np.load(sys.argv[1])
    rounds = int(sys.argv[2])
    params = json.loads(sys.argv[3])
    parties = int(data["parties"])
    xs = [data[f"x{i}"] for i in range(parties)]
    ys = [data[f"y{i}"] for i in range(parties)]
    d = xs[0].shape[1]
    model = SoftmaxLR(d, 2, params)
    marks: dict[str, float] = {}
    final: list[np.ndarray] = []

    class LRClient(NumPyClient):
        def __init__(self, pid: int) -> None:
            self.x, self.y = xs[pid], ys[pid]
            self.rng = np.random.default_rng(pid)

        def fit(self, parameters, config):
            return [model.fit(parameters[0], self.x, self.y, self.rng)], len(self.x), {}

        def evaluate(self, parameters, config):
            loss, correct = evaluate(model, parameters[0], self.x, self.y)
            return loss / len(self.x), len(self.x), {"accuracy": correct / len(self.x)}

    def client_fn(context: Context):
        return LRClient(int(context.node_config["partition-id"])).to_client()

    class Keep(FedAvg):
        # the server runs in this process (the clients in Ray's workers): its hooks time the
        # rounds, from the first round's fit to the last round's evaluation
        def configure_fit(self, server_round, parameters, client_manager):
            marks.setdefault("first_fit", time.perf_counter())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_evaluate(self, server_round, results, failures):
            marks["last_eval"] = time.perf_counter()
            return super().aggregate_evaluate(server_round, results, failures)

        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            if out[0] is not None:
                final[:] = parameters_to_ndarrays(out[0])
            return out

    def server_fn(context: Context) -> ServerAppComponents:
        strategy = Keep(fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=parties,
                        min_evaluate_clients=parties, min_available_clients=parties,
                        initial_parameters=ndarrays_to_parameters([model.initial(None)]))
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds))

    wall0, cpu0 = time.perf_counter(), time.process_time()
    run_simulation(server_app=ServerApp(server_fn=server_fn),
                   client_app=ClientApp(client_fn=client_fn), num_supernodes=parties,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    wall = time.perf_counter() - wall0
    x, y = np.concatenate(xs), np.concatenate(ys)
    _, correct = evaluate(model, final[0], x, y)
    print("RESULT " + json.dumps({
        "engine": "flower", "version": __import__("flwr").__version__, "wall_s": wall,
        "rounds_s": marks.get("last_eval", wall0) - marks.get("first_fit", wall0),
        "cpu_s_driver": time.process_time() - cpu0, "accuracy": correct / len(y),
        "pid": os.getpid()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
