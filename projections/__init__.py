"""Read models of the store: RocksDB projections and the one fold that builds them from events."""

from projections.fold import fold, fold_record
from projections.rocks import Projection, ProjectionBatch

__all__ = ["Projection", "ProjectionBatch", "fold", "fold_record"]
