"""Shared benchmark set-up: real CIFAR-10 (written on demand) and a model from a config or checkpoint."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT / ".cache" / "cifar"

# The plain path, --set options: what the reference release does (fp32, NCHW, PIL transforms in
# DataLoader workers).
PLAIN = ["trainer.autocast=null", "trainer.channels_last=false", "trainer.compile=false", "trainer.cuda_graph=false",
         "data_loader.args.pipeline=pil"]


def ensure_cifar10(data_dir):
    """Write CIFAR-10 with ../shared/data/make_cifar10.py unless ``data_dir`` already holds it."""
    if not (Path(data_dir) / "cifar-10-batches-py").is_dir():
        maker = ROOT.parent / "shared" / "data" / "make_cifar10.py"
        subprocess.run([sys.executable, str(maker), str(data_dir)], check=True)
    return Path(data_dir)


def load_model_and_data(checkpoint=None, config=ROOT / "configs" / "config_cifar10_ir100_tade.json",
                        data_dir=DEFAULT_DATA, device="cpu", sets=()):
    """(net, ConfigParser, data module): a trained checkpoint, or the config's network freshly
    initialised (enough for timing)."""
    import data_loader
    import model as models
    from trainer.evaluation import load_trained
    from utils.parse_config import ConfigParser, parse_set_expression, read_json
    from utils.performance import Performance

    ensure_cifar10(data_dir)
    overrides = [("data_loader.args.data_dir", str(data_dir), "--data_dir")]
    overrides += [(*parse_set_expression(s), "--set") for s in sets]
    if checkpoint:
        net, cfg, data, _ = load_trained(checkpoint, None, overrides, device)
        return net, cfg, data
    raw = read_json(config)
    ConfigParser.apply_overrides(raw, overrides, str(config))
    cfg = ConfigParser(raw, source=config)
    data = cfg.init_obj("data_loader", data_loader)
    net = cfg.init_obj("arch", models)
    net = Performance.from_config(raw.get("trainer")).prepare_model(net.to(device)).eval()
    return net, cfg, data
