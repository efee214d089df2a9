"""File formats: MRC/MRCS (mrcfile), RELION STAR (starfile), cryoSPARC ``.cs``.

All conversions between the field's file conventions and cryonb's internal ones live here
(``docs/conventions.md``).
"""

from .cryosparc import read_cryosparc_cs
from .errors import CryonbInputError, input_error
from .metadata import ParticleMetadata
from .mrc import MrcData, MrcStackWriter, read_mrc, read_mrc_header, write_mrc
from .star import read_particles_star, resolve_image_path, write_particles_star

__all__ = [
    "CryonbInputError",
    "MrcData",
    "MrcStackWriter",
    "ParticleMetadata",
    "input_error",
    "read_cryosparc_cs",
    "read_mrc",
    "read_mrc_header",
    "read_particles_star",
    "resolve_image_path",
    "write_mrc",
    "write_particles_star",
]
