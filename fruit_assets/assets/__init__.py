"""The asset graph: raw_images -> labelled_images -> mobilenet_features (+ image_errors) -> pca_model -> pca_features."""

from fruit_assets.assets.features import mobilenet_features_and_errors
from fruit_assets.assets.ingest import labelled_images, raw_images
from fruit_assets.assets.reduction import pca_features, pca_model

ALL_ASSETS = [raw_images, labelled_images, mobilenet_features_and_errors, pca_model, pca_features]
