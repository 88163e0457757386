"""Segmentation datasets behind one interface."""
from .base import CLASS_WORDS, Sample, SegmentationDataset, official_categories, read_class_file, read_image_list
from .layouts import (ADE20K, AUTHORS_NAMES, DATASETS, LABEL_READINGS, COCOObject, FolderDataset, PascalContext,
                      ToyDataset, VOC2012, authors_image_list, get_dataset)

__all__ = ["CLASS_WORDS", "Sample", "SegmentationDataset", "official_categories", "read_class_file", "read_image_list",
           "ADE20K", "AUTHORS_NAMES", "COCOObject", "DATASETS", "authors_image_list", "FolderDataset", "LABEL_READINGS",
           "PascalContext", "ToyDataset", "VOC2012", "get_dataset"]
