"""TFLite Metadata: the description of a ``.tflite`` that on-device task libraries read.

MediaPipe Tasks' ``ImageClassifier`` (Android, iOS, web), ML Kit custom models and the LiteRT
Support / Task Library open a model from the file alone when it carries a ``TFLITE_METADATA``
buffer (the flatbuffer of ``metadata_schema.fbs``, file identifier ``M001``) that says what the
input image is (RGB, how to normalize it) and where the labels are (an associated ``labels.txt``
in the zip appended to the model). This module builds that buffer from the same facts the
manifest records (name, version, labels, the input contract and each file's tensor types) and
puts it into the model, as TFLite Support's ``MetadataPopulator`` does; it reads it back for
``handserve verify``.

The flatbuffer code is the official generated code of the schema (``training/third_party``):
``tflite-support`` itself needs protobuf < 4, which TensorFlow 2.21 cannot share, so it cannot
be installed beside it. The model's own flatbuffer is read and written with TensorFlow's
generated ``schema_py_generated``. Only features of metadata schema 1.0.0 are used, so the
minimum parser version is 1.0.0.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flatbuffers

from training.third_party import metadata_schema_py_generated as fb

#: The name of the model's metadata entry that holds the buffer, and the buffer's identifier.
METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
TFLITE_IDENTIFIER = b"TFL3"
#: Every feature written here exists since metadata schema 1.0.0.
MIN_PARSER_VERSION = "1.0.0"


@dataclass(frozen=True)
class ImageModelInfo:
    """What the metadata says about one file, from the manifest's facts.

    Attributes:
        name, version, description: the model's, as in the manifest.
        labels_file: the associated file holding the labels (in the appended zip).
        other_files: further associated files in the zip (``metadata.json``), listed for tools.
        value_range: the pixel values the input tensor takes (raw 0..255: the model scales
            inside its graph, so normalization is the identity, mean 0 and std 1).
    """

    name: str
    version: int
    description: str
    labels_file: str
    other_files: tuple[str, ...] = ()
    value_range: tuple[float, float] = (0.0, 255.0)


def build_metadata(info: ImageModelInfo) -> bytes:
    """The ``M001`` flatbuffer for an image classifier taking an RGB image, raw values."""
    low, high = info.value_range
    image = fb.TensorMetadataT()
    image.name = "image"
    image.description = (
        f"an RGB image, {int(high)} = full intensity; the model converts colour itself "
        "(to luma for a grayscale model, with the ITU-R 601 weights Pillow uses)"
    )
    image.content = fb.ContentT()
    image.content.contentPropertiesType = fb.ContentProperties.ImageProperties
    image.content.contentProperties = fb.ImagePropertiesT()
    image.content.contentProperties.colorSpace = fb.ColorSpaceType.RGB
    normalize = fb.ProcessUnitT()
    normalize.optionsType = fb.ProcessUnitOptions.NormalizationOptions
    normalize.options = fb.NormalizationOptionsT()
    normalize.options.mean = [0.0]  # identity: the model takes the raw values
    normalize.options.std = [1.0]
    image.processUnits = [normalize]
    image.stats = fb.StatsT()
    image.stats.min, image.stats.max = [low], [high]

    scores = fb.TensorMetadataT()
    scores.name = "probability"
    scores.description = f"softmax probabilities, in the order of {info.labels_file}"
    scores.content = fb.ContentT()
    scores.content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    scores.content.contentProperties = fb.FeaturePropertiesT()
    scores.stats = fb.StatsT()
    scores.stats.min, scores.stats.max = [0.0], [1.0]
    labels = fb.AssociatedFileT()
    labels.name = info.labels_file
    labels.description = "class names, one per line, in output index order"
    labels.type = fb.AssociatedFileType.TENSOR_AXIS_LABELS
    scores.associatedFiles = [labels]

    subgraph = fb.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [scores]
    model = fb.ModelMetadataT()
    model.name = info.name
    model.version = str(info.version)
    model.description = info.description
    model.author = "handserve"
    model.subgraphMetadata = [subgraph]
    model.associatedFiles = []
    for name in info.other_files:
        extra = fb.AssociatedFileT()
        extra.name = name
        extra.description = "handserve's description of the input contract and tensors (JSON)"
        extra.type = fb.AssociatedFileType.UNKNOWN
        model.associatedFiles.append(extra)
    model.minParserVersion = MIN_PARSER_VERSION
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def populate(model: bytes, metadata: bytes) -> bytes:
    """``model`` (a bare ``.tflite`` flatbuffer) with ``metadata`` as its TFLITE_METADATA."""
    from tensorflow.lite.python import schema_py_generated as schema

    tree = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    buffer = schema.BufferT()
    buffer.data = list(metadata)
    tree.buffers = tree.buffers or []
    tree.metadata = [m for m in tree.metadata or [] if _name(m.name) != METADATA_NAME]
    tree.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(tree.buffers) - 1
    tree.metadata.append(entry)
    builder = flatbuffers.Builder(len(model) + len(metadata) + 1024)
    builder.Finish(tree.Pack(builder), TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def _name(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_metadata(path: Path) -> fb.ModelMetadataT | None:
    """The TFLITE_METADATA of a ``.tflite`` file, or None when it has none."""
    from tensorflow.lite.python import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == METADATA_NAME:
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            if not fb.ModelMetadata.ModelMetadataBufferHasIdentifier(raw, 0):
                raise ValueError(f"{METADATA_NAME} does not have the identifier M001")
            return fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAsModelMetadata(raw, 0))
    return None


def metadata_problems(path: Path, labels: list[str]) -> list[str]:
    """What keeps a task library from opening ``path`` as an image classifier (empty: nothing).

    Checked as MediaPipe's ImageClassifier and the Task Library check: one subgraph, one RGB
    image input of 3 channels with normalization options for a float tensor, one output whose
    TENSOR_AXIS_LABELS file is in the appended zip and holds exactly ``labels``.
    """
    from ai_edge_litert.interpreter import Interpreter

    try:
        meta = read_metadata(path)
    except (ValueError, IndexError) as exc:
        return [f"unreadable {METADATA_NAME}: {exc}"]
    if meta is None:
        return [f"no {METADATA_NAME} (exported before TFLite Metadata: re-export the run)"]
    problems = []
    subgraphs = meta.subgraphMetadata or []
    if len(subgraphs) != 1:
        return [f"{len(subgraphs)} subgraph metadata, not 1"]
    inputs, outputs = (
        subgraphs[0].inputTensorMetadata or [],
        subgraphs[0].outputTensorMetadata or [],
    )
    if len(inputs) != 1 or len(outputs) != 1:
        return [f"{len(inputs)} input and {len(outputs)} output tensor metadata, not 1 and 1"]
    tensor = Interpreter(model_path=str(path)).get_input_details()[0]
    content = inputs[0].content
    image = content.contentProperties if content is not None else None
    if not isinstance(image, fb.ImagePropertiesT):
        problems.append("the input is not described as an image")
    elif image.colorSpace != fb.ColorSpaceType.RGB:
        problems.append("the input image is not RGB")
    if int(tensor["shape"][-1]) not in (3, 4):
        problems.append(
            f"the input tensor has {tensor['shape'][-1]} channels; task libraries feed 3"
        )
    units = inputs[0].processUnits or []
    normalizes = [u for u in units if u.optionsType == fb.ProcessUnitOptions.NormalizationOptions]
    if tensor["dtype"].__name__ == "float32" and not normalizes:
        problems.append("a float input without NormalizationOptions")
    files = [
        f
        for f in outputs[0].associatedFiles or []
        if f.type == fb.AssociatedFileType.TENSOR_AXIS_LABELS
    ]
    if len(files) != 1:
        return [*problems, "no TENSOR_AXIS_LABELS file for the output"]
    try:
        with zipfile.ZipFile(path) as zf:
            text = zf.read(_name(files[0].name)).decode()
    except (KeyError, zipfile.BadZipFile) as exc:
        return [*problems, f"labels file {_name(files[0].name)} is not packed in the model: {exc}"]
    if [line for line in text.splitlines() if line] != labels:
        problems.append("the packed labels differ from the manifest's")
    return problems
