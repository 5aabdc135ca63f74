"""Evidence beside the verdict: what an image's own metadata says about where it came from.

A probability is an opinion; many AI images also carry a statement, and an analyst wants to show it:

* **C2PA content credentials**: a signed manifest store, read and validated by the C2PA project's own library
  (``c2pa-python``, never a hand-written parser). ``valid``: the signature and every hash check out and the signer
  chains to a trust anchor (``trust_anchors``, PEM); ``unverified``: the manifest is intact but its signer is not
  in the trust list, or it lives at a remote URL this offline reader does not fetch; ``invalid``: a hash or
  signature fails (the image was changed after signing) or the manifest is malformed. Empty when there is none.
* **Digital source type** (IPTC's vocabulary: ``trainedAlgorithmicMedia``, ``compositeWithTrainedAlgorithmicMedia``,
  ``algorithmicMedia``, ``digitalCapture``...), from the C2PA manifest's actions, else from IPTC XMP
  (``Iptc4xmpExt:DigitalSourceType``).
* **Generator metadata**: ComfyUI's ``prompt``/``workflow`` PNG text chunks, AUTOMATIC1111's ``parameters`` (PNG
  text or EXIF UserComment), InvokeAI's ``invokeai_metadata``/``sd-metadata``, NovelAI's ``Software``/``Source``,
  and a generator named by EXIF ``Software`` or XMP ``CreatorTool``.
* **Camera**: EXIF make and model.

Metadata is easily removed and easily forged (only a ``valid`` C2PA manifest is signed), so evidence never changes
``prob_ai``: it stands beside it. Reading is bounded: files over ``max_bytes`` are not parsed, only PIL's header
pass runs (no pixel decoding), and the C2PA reader is configured to make no network call (no remote manifests, no
OCSP).
"""

from __future__ import annotations

import io
import json
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

MAX_BYTES = 64 * 2**20  # files larger than this are not parsed for evidence
COLUMNS = ("evidence_c2pa", "evidence_source_type", "evidence_generator", "evidence_camera", "evidence_summary")
AI_SOURCE_TYPES = ("trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia", "algorithmicMedia")
_SOURCE_TYPE = re.compile(r"digitalsourcetype/([A-Za-z]+)")
_C2PA_STATES = {"Trusted": "valid", "Valid": "unverified", "Invalid": "invalid"}
_GENERATOR_NAMES = {  # lower-case substring of EXIF Software / XMP CreatorTool -> generator
    "comfyui": "comfyui",
    "novelai": "novelai",
    "invokeai": "invokeai",
    "stable diffusion": "a1111",
    "automatic1111": "a1111",
    "midjourney": "midjourney",
    "dall-e": "dall-e",
    "dall·e": "dall-e",
    "firefly": "firefly",
    "imagen": "imagen",
}
_EXIF_MAKE, _EXIF_MODEL, _EXIF_SOFTWARE, _EXIF_USER_COMMENT, _EXIF_IFD = 0x010F, 0x0110, 0x0131, 0x9286, 0x8769


@dataclass(frozen=True)
class Evidence:
    """What one image's metadata says (empty strings: nothing found)."""

    c2pa: str = ""  # valid | unverified | invalid | "" (no manifest)
    source_type: str = ""  # IPTC digital source type, e.g. trainedAlgorithmicMedia
    generator: str = ""  # comfyui | a1111 | invokeai | novelai | midjourney | dall-e | firefly | imagen | ""
    camera: str = ""  # "Make Model" from EXIF
    summary: str = ""  # one line for a human

    def columns(self) -> dict[str, str]:
        """The ``evidence_*`` columns of ``predictions/files.csv``."""
        return dict(zip(COLUMNS, (self.c2pa, self.source_type, self.generator, self.camera, self.summary), strict=True))

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def claims_ai(self) -> bool:
        """Whether the metadata says the image is (partly) generated."""
        return self.source_type in AI_SOURCE_TYPES or bool(self.generator)


def read_evidence(
    source: str | os.PathLike | bytes, trust_anchors: str | None = None, max_bytes: int = MAX_BYTES
) -> Evidence:
    """Reads the evidence of one image: a path or the file's bytes. Never raises for a bad file, never touches the
    network; ``trust_anchors`` is PEM text of the certificates whose signers count as ``valid``."""
    try:
        data = source if isinstance(source, bytes) else _read_bounded(Path(source), max_bytes)
    except OSError as e:
        return Evidence(summary=f"not read: {e.strerror or e}")
    if data is None:
        return Evidence(summary=f"not read: larger than {max_bytes // 2**20} MiB")
    c2pa_state, c2pa_type, signer, c2pa_note = _c2pa(data, trust_anchors)
    meta = _metadata(data)
    source_type = c2pa_type or meta.get("source_type", "")
    evidence = Evidence(c2pa_state, source_type, meta.get("generator", ""), meta.get("camera", ""))
    return Evidence(**{**asdict(evidence), "summary": _summary(evidence, signer, c2pa_note, meta)})


def _read_bounded(path: Path, max_bytes: int) -> bytes | None:
    if path.stat().st_size > max_bytes:
        return None
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------------ C2PA
def _c2pa(data: bytes, trust_anchors: str | None) -> tuple[str, str, str, str]:
    """(state, digital source type, signer, note) of the C2PA manifest store embedded in ``data``."""
    try:
        import c2pa
    except ImportError:  # a declared dependency; reported rather than fatal, so predictions still get written
        return "", "", "", "C2PA not checked (c2pa-python is not installed)"
    mime = _mime(data)
    if mime is None:
        return "", "", "", ""
    settings = {"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}}
    if trust_anchors:
        settings["trust"] = {"trust_anchors": trust_anchors}
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=c2pa.Context.from_dict(settings))
        if reader is None:
            return "", "", "", ""
        with reader:
            if not reader.is_embedded():
                url = reader.get_remote_url() or "a remote URL"
                return "unverified", "", "", f"its manifest is at {url}, not fetched (offline)"
            state = _C2PA_STATES.get(reader.get_validation_state() or "", "invalid")
            manifest = reader.get_active_manifest() or {}
            failures = (reader.get_validation_results() or {}).get("activeManifest", {}).get("failure", [])
    except c2pa.C2paError as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Remote" in type(e).__name__ or message.startswith("Remote"):  # a manifest only at a URL: never fetched
            url = re.search(r"https?://\S+", message)
            where = f" at {url.group(0)}" if url else ""
            return "unverified", "", "", f"its manifest is remote{where}, not fetched (this reader is offline)"
        if "could not be parsed" in message:  # the file itself is broken, whatever its manifest
            return "", "", "", "C2PA not checked: the file could not be parsed"
        return "invalid", "", "", f"malformed manifest ({message[:120]})"
    codes = [f.get("code", "") for f in failures if f.get("code") != "signingCredential.untrusted"]
    signer = (manifest.get("signature_info") or {}).get("issuer", "")
    return state, _manifest_source_type(manifest), signer, ", ".join(codes)


def _mime(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:12] in (b"ftypavif", b"ftypheic", b"ftypmif1"):
        return "image/avif" if data[8:12] == b"avif" else "image/heic"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    return None


def _manifest_source_type(manifest: dict) -> str:
    for assertion in manifest.get("assertions", []):
        if not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        for action in (assertion.get("data") or {}).get("actions", []):
            found = _SOURCE_TYPE.search(str(action.get("digitalSourceType", "")))
            if found:
                return found.group(1)
    return ""


# ------------------------------------------------------------------------------------------------ metadata
def _metadata(data: bytes) -> dict[str, str]:
    """Generator, camera, IPTC source type and which metadata is present, from PIL's header pass (no decoding)."""
    found: dict[str, str] = {}
    try:
        with Image.open(io.BytesIO(data)) as im:
            info = dict(im.info)
            exif = im.getexif()
            software = str(exif.get(_EXIF_SOFTWARE, "") or info.get("Software", "") or "")
            comment = exif.get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT, b"")
    except Exception:  # any decoder error: the file simply gives no metadata evidence
        return found
    xmp = info.get("xmp") or info.get("XML:com.adobe.xmp") or b""
    xmp = xmp.decode("utf-8", "replace") if isinstance(xmp, bytes) else str(xmp)
    source = _SOURCE_TYPE.search(xmp)
    if source:
        found["source_type"] = source.group(1)
    generator = _generator(info, software, _user_comment(comment), xmp)
    if generator:
        found["generator"] = generator
    make, model = (str(exif.get(tag, "")).strip("\x00 ") for tag in (_EXIF_MAKE, _EXIF_MODEL))
    camera = model if make and model.lower().startswith(make.lower()) else f"{make} {model}".strip()
    if camera:
        found["camera"] = camera
    if software:
        found["software"] = software
    return found


def _generator(info: dict, software: str, comment: str, xmp: str) -> str:
    if "prompt" in info and "workflow" in info or "workflow" in info and _is_json(info["workflow"]):
        return "comfyui"
    if "invokeai_metadata" in info or "sd-metadata" in info or "invokeai_graph" in info:
        return "invokeai"
    if str(info.get("Software", "")).lower().startswith("novelai") or "NovelAI" in str(info.get("Source", "")):
        return "novelai"
    if "parameters" in info or ("Steps:" in comment and "Sampler:" in comment):
        return "a1111"
    tool = re.search(r'CreatorTool(?:="|>)([^"<]+)', xmp)
    for text in (software, tool.group(1) if tool else ""):
        for needle, name in _GENERATOR_NAMES.items():
            if needle in text.lower():
                return name
    return ""


def _is_json(text) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except (TypeError, ValueError):
        return False


def _user_comment(value) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then the text (ASCII or UTF-16)."""
    if isinstance(value, str):
        return value
    raw = bytes(value or b"")
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        return body.decode("utf-16-be" if body[:1] == b"\x00" else "utf-16-le", "replace")
    return body.decode("utf-8", "replace")


def _summary(evidence: Evidence, signer: str, c2pa_note: str, meta: dict) -> str:
    parts = []
    from_c2pa = evidence.c2pa and evidence.source_type and evidence.source_type != meta.get("source_type")
    if evidence.c2pa:
        claims = f" claiming {evidence.source_type}" if from_c2pa else ""
        by = f", signed by {signer}" if signer else ""
        untrusted = " (signer not in the trust list)" if evidence.c2pa == "unverified" and not c2pa_note else ""
        changed = " (changed after signing, or a broken manifest)" if evidence.c2pa == "invalid" else ""
        note = f": {c2pa_note}" if c2pa_note else ""
        parts.append(f"C2PA {evidence.c2pa}{claims}{by}{untrusted}{changed}{note}")
    elif c2pa_note:
        parts.append(c2pa_note)
    if meta.get("source_type"):
        parts.append(f"IPTC source type {meta['source_type']} (XMP, unsigned)")
    if evidence.generator:
        parts.append(f"{evidence.generator} generator metadata (unsigned)")
    if evidence.camera:
        parts.append(f"camera {evidence.camera} (EXIF, unsigned)")
    return "; ".join(parts) or "no provenance metadata"


def evidence_counts(evidence: list[Evidence]) -> dict:
    """Counts over a split, for report.json: C2PA states, source types and generators (empty values left out), and
    how many images carry any evidence at all."""

    def count(values) -> dict[str, int]:
        return dict(sorted(Counter(v for v in values if v).items()))

    return {
        "images": len(evidence),
        "with_evidence": sum(1 for e in evidence if e.c2pa or e.source_type or e.generator or e.camera),
        "claims_ai": sum(1 for e in evidence if e.claims_ai),
        "c2pa": count(e.c2pa for e in evidence),
        "source_type": count(e.source_type for e in evidence),
        "generator": count(e.generator for e in evidence),
    }


def load_trust_anchors(path: str | os.PathLike | None, key: str = "report.trust_anchors") -> str | None:
    """The PEM text of a trust-anchor file (the certificates whose signers make a C2PA manifest ``valid``), or
    None; a missing or non-PEM file is a one-line error naming ``key``."""
    if path is None:
        return None
    from deepfake_lightning.errors import ConfigError

    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"{key}={path}: cannot read it ({e.strerror or e})") from e
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"{key}={path}: not a PEM file of certificates (no BEGIN CERTIFICATE line)")
    return text


def evidence_of(paths: list[str | os.PathLike], trust_anchors: str | None = None) -> list[Evidence]:
    """:func:`read_evidence` of each file, in order."""
    return [read_evidence(p, trust_anchors) for p in paths]


def evidence_columns(evidence: list[Evidence]) -> dict[str, list[str]]:
    """The ``evidence_*`` columns for a predictions table, one value per image."""
    return {column: [e.columns()[column] for e in evidence] for column in COLUMNS}


def caption(evidence: Evidence, width: int = 70) -> str:
    """A figure caption: the summary, wrapped to ``width`` characters a line."""
    import textwrap

    return "\n".join(textwrap.wrap(f"Evidence: {evidence.summary}", width))


def format_counts(by_split: dict[str, dict]) -> str:
    """The printed lines of ``report.json``'s evidence counts: one per split that has any evidence."""
    lines = []
    for split, counts in by_split.items():
        if not counts.get("with_evidence"):
            continue
        found = [f"C2PA {k} {v}" for k, v in counts["c2pa"].items()]
        found += [f"{k} {v}" for k, v in counts["source_type"].items()]
        found += [f"{k} metadata {v}" for k, v in counts["generator"].items()]
        lines.append(
            f"  {split}: {counts['with_evidence']} of {counts['images']} images carry provenance metadata, "
            f"{counts['claims_ai']} claim AI generation ({', '.join(found) or 'camera EXIF only'})"
        )
    return (
        "\n\nEvidence in the files' metadata (beside the verdicts, never in them):\n" + "\n".join(lines)
        if lines
        else ""
    )
