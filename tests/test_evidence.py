"""Evidence beside the verdict (evidence.py): C2PA content credentials signed here with a self-signed test
certificate, IPTC source types in XMP, generator metadata, and where the evidence is shown."""

import datetime
import json
import shutil
from pathlib import Path

import c2pa
import numpy as np
import pandas as pd
import pytest
from PIL import Image, PngImagePlugin

from deepfake_lightning.evidence import (
    COLUMNS,
    Evidence,
    evidence_counts,
    format_counts,
    load_trust_anchors,
    read_evidence,
)
from tests.helpers import CONFIGS, best_checkpoint, copy_run


@pytest.fixture(scope="module")
def demo_run(quick_run, tmp_path_factory):
    """A copy of the session's quick run (conftest's ``quick_run``: this module checks formats, errors, options and
    parity, not what a model learned): its evaluations write into the copy (``RUN/eval/``), not into the run the
    session's other tests read."""
    return copy_run(quick_run, tmp_path_factory.mktemp("run_copy") / "version_0")


IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"


def _certificates() -> tuple[bytes, bytes, bytes]:
    """(signing chain PEM, private key PEM, root CA PEM): an ES256 root and a leaf with the extensions C2PA asks of
    a signer (digital signature, email-protection EKU, key identifiers)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dl tests")]
        )

    now = datetime.datetime.now(datetime.timezone.utc)
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False)
    usage |= dict(encipher_only=False, decipher_only=False)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("Test Root"))
        .issuer_name(name("Test Root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("Test Signer"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
    private = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return chain, private, ca.public_bytes(pem)


def _sign(source, target, signer, source_type: str, mime: str = "image/jpeg", remote: str | None = None) -> None:
    manifest = {
        "claim_generator_info": [{"name": "deepfake-lightning tests", "version": "1"}],
        "title": target.name,
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]},
            }
        ],
    }
    builder = c2pa.Builder(json.dumps(manifest))
    if remote:
        builder.set_no_embed()
        builder.set_remote_url(remote)
    with open(source, "rb") as src, open(target, "w+b") as dst:
        builder.sign(signer, mime, src, dst)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Every kind of evidence as files in a folder, and the PEM of the root that signed the C2PA ones."""
    d = tmp_path_factory.mktemp("evidence")
    chain, key, root = _certificates()
    (d / "root.pem").write_bytes(root)
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg="es256", sign_cert=chain, private_key=key, ta_url=None))
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(d / "plain.jpg", quality=90)
    Image.fromarray(pixels).save(d / "plain.png")
    _sign(d / "plain.jpg", d / "c2pa_ai.jpg", signer, "trainedAlgorithmicMedia")
    _sign(d / "plain.jpg", d / "c2pa_capture.jpg", signer, "digitalCapture")
    _sign(d / "plain.png", d / "c2pa_ai.png", signer, "compositeWithTrainedAlgorithmicMedia", "image/png")
    _sign(
        d / "plain.jpg",
        d / "c2pa_remote.jpg",
        signer,
        "trainedAlgorithmicMedia",
        remote="https://example.invalid/m.c2pa",
    )
    data = bytearray((d / "c2pa_ai.jpg").read_bytes())
    scan = data.rfind(b"\xff\xda")
    for k in range(scan + 200, scan + 260):  # pixels changed after signing
        data[k] ^= 0x55
    (d / "c2pa_tampered.jpg").write_bytes(bytes(data))
    data = bytearray((d / "c2pa_ai.jpg").read_bytes())
    jumbf = data.find(b"\xff\xeb")  # the manifest store's APP11 segment, garbled
    for k in range(jumbf + 60, jumbf + 120):
        data[k] ^= 0x5A
    (d / "c2pa_malformed.jpg").write_bytes(bytes(data))
    small = Image.fromarray(pixels[:16, :16])
    chunks = {
        "comfyui.png": {"prompt": '{"3": {"class_type": "KSampler"}}', "workflow": '{"nodes": []}'},
        "a1111.png": {"parameters": "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7"},
        "invokeai.png": {"invokeai_metadata": '{"positive_prompt": "a cat"}'},
        "novelai.png": {"Software": "NovelAI", "Source": "Stable Diffusion XL C1E1DE52"},
    }
    for name, texts in chunks.items():
        info = PngImagePlugin.PngInfo()
        for k, v in texts.items():
            info.add_text(k, v)
        small.save(d / name, pnginfo=info)
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'Iptc4xmpExt:DigitalSourceType="{IPTC}trainedAlgorithmicMedia"/></rdf:RDF></x:xmpmeta>'
    )
    small.save(d / "iptc.jpg", xmp=xmp.encode())
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    small.save(d / "iptc.png", pnginfo=info)
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5"
    small.save(d / "camera.jpg", exif=exif.tobytes())
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "NIKON CORPORATION", "NIKON CORPORATION NIKON Z 9"  # the make inside the model
    small.save(d / "camera_nikon.jpg", exif=exif.tobytes())
    exif = Image.Exif()
    exif[0x0131] = "Midjourney v6"
    small.save(d / "midjourney.jpg", exif=exif.tobytes())
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"ASCII\x00\x00\x00a cat\nSteps: 30, Sampler: DPM++ 2M, Seed: 1"
    small.save(d / "a1111.jpg", exif=exif.tobytes())
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return d


EXPECTED = {  # file: (c2pa untrusted, c2pa with the root as trust anchor, source type, generator, camera)
    "plain.jpg": ("", "", "", "", ""),
    "c2pa_ai.jpg": ("unverified", "valid", "trainedAlgorithmicMedia", "", ""),
    "c2pa_capture.jpg": ("unverified", "valid", "digitalCapture", "", ""),
    "c2pa_ai.png": ("unverified", "valid", "compositeWithTrainedAlgorithmicMedia", "", ""),
    "c2pa_tampered.jpg": ("invalid", "invalid", "trainedAlgorithmicMedia", "", ""),
    "c2pa_malformed.jpg": ("invalid", "invalid", "", "", ""),
    "c2pa_remote.jpg": ("unverified", "unverified", "", "", ""),
    "comfyui.png": ("", "", "", "comfyui", ""),
    "a1111.png": ("", "", "", "a1111", ""),
    "a1111.jpg": ("", "", "", "a1111", ""),
    "invokeai.png": ("", "", "", "invokeai", ""),
    "novelai.png": ("", "", "", "novelai", ""),
    "midjourney.jpg": ("", "", "", "midjourney", ""),
    "iptc.jpg": ("", "", "trainedAlgorithmicMedia", "", ""),
    "iptc.png": ("", "", "trainedAlgorithmicMedia", "", ""),
    "camera.jpg": ("", "", "", "", "Canon EOS R5"),
    "camera_nikon.jpg": ("", "", "", "", "NIKON CORPORATION NIKON Z 9"),
    "broken.jpg": ("", "", "", "", ""),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_fixture_reads_as_expected(fixtures, name):
    untrusted, trusted, source_type, generator, camera = EXPECTED[name]
    anchors = load_trust_anchors(fixtures / "root.pem")
    for state, evidence in (
        (untrusted, read_evidence(fixtures / name)),
        (trusted, read_evidence(fixtures / name, anchors)),
    ):
        assert (evidence.c2pa, evidence.source_type, evidence.generator, evidence.camera) == (
            state,
            source_type,
            generator,
            camera,
        )
        assert evidence.summary and "\n" not in evidence.summary
    assert read_evidence((fixtures / name).read_bytes(), anchors) == read_evidence(fixtures / name, anchors)


def test_summaries_say_what_was_found_and_how_far_to_trust_it(fixtures):
    anchors = load_trust_anchors(fixtures / "root.pem")
    assert read_evidence(fixtures / "c2pa_ai.jpg", anchors).summary == (
        "C2PA valid claiming trainedAlgorithmicMedia, signed by dl tests"
    )
    assert "signer not in the trust list" in read_evidence(fixtures / "c2pa_ai.jpg").summary
    assert "assertion.dataHash.mismatch" in read_evidence(fixtures / "c2pa_tampered.jpg").summary
    assert "malformed manifest" in read_evidence(fixtures / "c2pa_malformed.jpg").summary
    assert "https://example.invalid/m.c2pa, not fetched" in read_evidence(fixtures / "c2pa_remote.jpg").summary
    assert read_evidence(fixtures / "comfyui.png").summary == "comfyui generator metadata (unsigned)"
    assert read_evidence(fixtures / "plain.jpg").summary == "no provenance metadata"
    assert read_evidence(fixtures / "missing.jpg").summary.startswith("not read:")
    assert read_evidence(fixtures / "c2pa_ai.jpg", max_bytes=100).summary == "not read: larger than 0 MiB"


def test_trust_anchors_must_be_a_pem_file(tmp_path):
    from deepfake_lightning.errors import ConfigError

    (tmp_path / "x.pem").write_text("hello")
    with pytest.raises(ConfigError, match=r"report.trust_anchors=.*x.pem: not a PEM file"):
        load_trust_anchors(tmp_path / "x.pem")
    with pytest.raises(ConfigError, match=r"--trust_anchors=.*nope.pem: cannot read it"):
        load_trust_anchors(tmp_path / "nope.pem", "--trust_anchors")


def test_counts_per_split():
    found = [
        Evidence("valid", "trainedAlgorithmicMedia"),
        Evidence(generator="comfyui"),
        Evidence(camera="X"),
        Evidence(),
    ]
    counts = evidence_counts(found)
    assert counts == {
        "images": 4,
        "with_evidence": 3,
        "claims_ai": 2,
        "c2pa": {"valid": 1},
        "source_type": {"trainedAlgorithmicMedia": 1},
        "generator": {"comfyui": 1},
    }
    assert "test_v2: 3 of 4 images carry provenance metadata, 2 claim AI generation" in format_counts(
        {"test_v2": counts}
    )
    assert format_counts({"test_v2": evidence_counts([Evidence()])}) == ""


# --------------------------------------------------------------------------- shown wherever a verdict is shown
def test_predict_files_gets_evidence_columns_and_the_same_probabilities(fixtures, demo_run, demo_root, tmp_path):
    from deepfake_lightning.callbacks import PredictionWriter
    from deepfake_lightning.cli import cli_main

    ckpt = best_checkpoint(demo_run)
    files = [str(fixtures / n) for n in ("c2pa_ai.jpg", "comfyui.png", "plain.jpg", "iptc.png")]
    tables = {}
    for evidence in ("true", "false"):
        out = tmp_path / evidence
        cli = cli_main(
            [
                "predict",
                "--config",
                str(CONFIGS / "demo.yaml"),
                f"--data.root={demo_root}",
                f"--ckpt_path={ckpt}",
                f"--data.predict_paths={json.dumps(files)}",
                f"--trainer.default_root_dir={out}",
                f"--report.evidence={evidence}",
                f"--report.trust_anchors={fixtures / 'root.pem'}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
            ]
        )
        writer = next(c for c in cli.trainer.callbacks if isinstance(c, PredictionWriter))
        tables[evidence] = pd.read_csv(writer.written["predictions"], keep_default_na=False)
    with_evidence, without = tables["true"], tables["false"]
    assert with_evidence["prob_ai"].tolist() == without["prob_ai"].tolist()  # beside the verdict, never in it
    assert not set(COLUMNS) & set(without.columns)
    rows = with_evidence.set_index(with_evidence["id"].map(lambda p: p.rsplit("/", 1)[-1]))
    assert rows.loc["c2pa_ai.jpg", "evidence_c2pa"] == "valid"
    assert rows.loc["c2pa_ai.jpg", "evidence_source_type"] == "trainedAlgorithmicMedia"
    assert rows.loc["comfyui.png", "evidence_generator"] == "comfyui"
    assert rows.loc["iptc.png", "evidence_source_type"] == "trainedAlgorithmicMedia"
    assert rows.loc["plain.jpg", "evidence_summary"] == "no provenance metadata"


def test_explain_captions_and_csv_carry_the_evidence(fixtures, demo_run, tmp_path):
    from deepfake_lightning.commands.explain import explain_main

    ckpt = best_checkpoint(demo_run)
    out = tmp_path / "explained"
    explain_main(
        [str(fixtures / "c2pa_tampered.jpg"), str(fixtures / "a1111.png"), "--ckpt_path", str(ckpt), "--out", str(out)]
    )
    table = pd.read_csv(out / "explanations.csv", keep_default_na=False).set_index("file")
    assert table.loc[str(fixtures / "c2pa_tampered.jpg"), "evidence_c2pa"] == "invalid"
    assert table.loc[str(fixtures / "a1111.png"), "evidence_generator"] == "a1111"
    assert all((out / png).is_file() for png in table["png"])
    maps = tmp_path / "maps"  # score maps (a crop-mode model): the evidence under each map's title
    explain_main([str(fixtures / "iptc.png"), "--ckpt_path", str(ckpt), "--out", str(maps), "--map", "true"])
    row = pd.read_csv(maps / "explanations.csv", keep_default_na=False).iloc[0]
    assert row["evidence_source_type"] == "trainedAlgorithmicMedia" and (maps / row["png"]).is_file()


@pytest.mark.slow  # a `deepfake test` end to end
def test_deepfake_test_counts_the_evidence_per_split_and_class(fixtures, demo_run, kaggle_root, tmp_path, console):
    from deepfake_lightning.callbacks import EvaluationReport
    from deepfake_lightning.cli import cli_main

    root = Path(shutil.copytree(kaggle_root, tmp_path / "data"))
    table = pd.read_csv(root / "test_v1.csv")
    ai, human = table.index[table["label"] == 1][:2], table.index[table["label"] == 0][:1]
    for i, name in zip([*ai, *human], ["c2pa_ai.jpg", "comfyui.png", "camera.jpg"], strict=True):
        (root / table.loc[i, "id"]).unlink()
        table.loc[i, "id"] = f"test_data_v1/{name}"
        shutil.copy(fixtures / name, root / "test_data_v1" / name)
    table.to_csv(root / "test_v1.csv", index=False)
    cli = cli_main(
        [
            "test",
            "--config",
            str(CONFIGS / "demo.yaml"),
            f"--ckpt_path={best_checkpoint(demo_run)}",
            f"--data.root={root}",
            "--data.demo=false",
            "--data.test_v1_csv=test_v1.csv",
            "--data.num_workers=0",
            f"--report.trust_anchors={fixtures / 'root.pem'}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    report = next(c for c in cli.trainer.callbacks if isinstance(c, EvaluationReport)).report
    counts = report["splits"]["test_v1"]["evidence"]
    assert counts["images"] == len(table) and counts["with_evidence"] == 3 and counts["claims_ai"] == 2
    assert counts["c2pa"] == {"valid": 1} and counts["generator"] == {"comfyui": 1}
    assert counts["ai"]["claims_ai"] == 2 and counts["human"]["with_evidence"] == 1  # the camera, per class
    assert report["splits"]["test_v2"]["evidence"]["with_evidence"] == 0
    assert "test_v1: 3 of 12 images carry provenance metadata, 2 claim AI generation" in console.getvalue()
