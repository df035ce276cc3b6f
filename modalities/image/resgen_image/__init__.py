"""ResGen image modality: RQ-VAE codec, image data modules, digits judge, PNG writer.

Registered through the entry point ``resgen.modalities: image = resgen_image:plugin``,
exactly as a third-party plugin would be.
"""

from resgen.plugins import Modality
from resgen_image.classifier import DigitsClassifier
from resgen_image.codec import RQVAE
from resgen_image.data import (
    CIFAR10DataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    LabelsDataModule,
    MNISTDataModule,
)
from resgen_image.inception import InceptionFeatures
from resgen_image.writer import ImageWriter

plugin = Modality(
    name="image",
    description="class-conditional images: RQ-VAE codec, digits/MNIST/CIFAR-10/ImageNet folders, PNG output",
    prediction_writer=ImageWriter,
    predict_data=LabelsDataModule,
    configs=("configs/image",),
)

__all__ = [
    "CIFAR10DataModule",
    "DigitsClassifier",
    "DigitsDataModule",
    "ImageFolderDataModule",
    "ImageWriter",
    "InceptionFeatures",
    "LabelsDataModule",
    "MNISTDataModule",
    "RQVAE",
    "plugin",
]
