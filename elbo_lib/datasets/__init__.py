"""Segmentation datasets behind one interface."""
from .base import Sample, SegmentationDataset, read_class_file
from .layouts import ADE20K, COCOObject, DATASETS, FolderDataset, PascalContext, ToyDataset, VOC2012, get_dataset

__all__ = ["Sample", "SegmentationDataset", "read_class_file", "ADE20K", "COCOObject", "DATASETS", "FolderDataset",
           "PascalContext", "ToyDataset", "VOC2012", "get_dataset"]
