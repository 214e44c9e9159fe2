"""Where CLIP weights come from: the Hugging Face cache, else a download we know can work.

Left to itself, a download from an unreachable hub retries for minutes; a shop owner
on a laptop without internet should instead learn within seconds how to supply
weights. So: look in the cache first, refuse at once when offline mode is set, and
probe the hub with a short timeout before letting anything download.
"""

from __future__ import annotations

import os
import threading

from vsearch.errors import ModelError, ModelUnavailableError

PROBE_TIMEOUT_S = 3.0


def how_to_supply_weights(create_args: str = "'ViT-B-32', pretrained='laion2b_s34b_b79k'") -> str:
    """The remedies, with a download command for the model at hand (open_clip.create_model args)."""
    return (
        "To use CLIP without internet: pass a local checkpoint (--pretrained "
        "/path/to/checkpoint.bin, "
        "e.g. an open_clip_pytorch_model.bin); or download the weights once on a machine with "
        "internet "
        f'(python -c "import open_clip; open_clip.create_model({create_args})") and copy that '
        "Hugging Face cache here, pointing HF_HOME at it. "
        "Or use the offline image model: --model efficientnet-lite0 (image queries only)."
    )


def hf_cache_dir() -> str:
    """The hub cache folder, read from the environment now (huggingface_hub reads it at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "huggingface", "hub")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when `url` answers within `timeout` seconds, else the reason it did not.

    Runs in a daemon thread because DNS lookups ignore socket timeouts.
    """
    import urllib.error
    import urllib.request

    result: list[str | None] = []

    def probe() -> None:
        try:
            req = urllib.request.Request(url, method="HEAD")
            with urllib.request.urlopen(req, timeout=timeout):
                pass
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # the server answered; that is all we need to know
        except Exception as e:  # URLError, timeouts, SSL errors...
            result.append(f"{type(e).__name__}: {getattr(e, 'reason', e)}")

    t = threading.Thread(target=probe, name="vsearch-hub-probe", daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return f"no answer within {timeout:.0f} s"
    return result[0]


def cached_hf_file(repo_id: str, filename: str, cache_dir: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
    except Exception:
        return None
    return path if isinstance(path, str) and os.path.isfile(path) else None


def fetch_hf_file(repo_id: str, filenames: list[str], *, what: str, create_args: str) -> str:
    """Path of the first of `filenames` in `repo_id`, from the cache or downloaded.

    Raises ModelUnavailableError, fast, when none is cached and the hub cannot be used;
    `create_args` completes the download command the message suggests.
    """
    cache_dir = hf_cache_dir()
    for filename in filenames:
        path = cached_hf_file(repo_id, filename, cache_dir)
        if path:
            return path

    shown = " or ".join(filenames)
    if hub_offline():
        reason = "HF_HUB_OFFLINE is set"
    else:
        reason = reachable(hub_endpoint())
    if reason:
        raise ModelUnavailableError(
            f"weights for {what} ({repo_id}: {shown}) are not in the Hugging Face cache "
            f"({cache_dir}) and cannot be downloaded from {hub_endpoint()} ({reason}). "
            + how_to_supply_weights(create_args)
        )

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    last: Exception | None = None
    for filename in filenames:
        try:
            return hf_hub_download(repo_id, filename, cache_dir=cache_dir)
        except EntryNotFoundError as e:
            last = e
            continue
        except RepositoryNotFoundError as e:  # also gated/private repos without a token
            raise ModelError(
                f"the Hugging Face repo {repo_id} (for {what}) does not exist or is not "
                f"accessible: {e}"
            ) from e
        except Exception as e:
            raise ModelUnavailableError(
                f"downloading weights for {what} ({repo_id}/{filename}) failed: {e}. "
                + how_to_supply_weights(create_args)
            ) from e
    raise ModelUnavailableError(
        f"the Hugging Face repo {repo_id} has none of {shown}, so it holds no open_clip weights "
        f"for {what} "
        f"({last}). " + how_to_supply_weights(create_args)
    )


def weight_candidates(filename: str) -> list[str]:
    """safetensors first (no pickle), then the named file - as open_clip itself does."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    filename = filename or HF_WEIGHTS_NAME
    out = []
    if filename == HF_WEIGHTS_NAME:
        out.append(HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        out.append(filename[:-4] + ".safetensors")
    out.append(filename)
    return out
