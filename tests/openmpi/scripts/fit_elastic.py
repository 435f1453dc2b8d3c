"""fit(..., elastic=True) on a small regression; every surviving rank prints its result as one JSON line.
argv: OUT_DIR [RESUME]."""
import json
import sys

import torch

from ringtrain import fit
from ringtrain.elastic import finalize

torch.manual_seed(0)
x = torch.randn(96, 5)
data = torch.utils.data.TensorDataset(x, x @ torch.arange(5.0).unsqueeze(1) + 0.1 * torch.randn(96, 1))
net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
mse = lambda m, a, b: torch.nn.functional.mse_loss(m(a), b)  # noqa: E731
out = sys.argv[1]
result = fit(net, mse, data, steps=8, batch_size=4, elastic=True, out_dir=out, checkpoint_dir=out + "/ck",
             checkpoint_every="1", keep_checkpoints=100, log_every=1,
             resume=sys.argv[2] if len(sys.argv) > 2 else "auto")
print("RESULT " + json.dumps({"recoveries": result.get("recoveries", []), "losses": result["losses"],
                              "params": [p.detach().flatten().tolist() for p in net.parameters()]}), flush=True)
finalize.exit()  # after a shrink, without MPI_Finalize, which may wait on the dead rank
