"""The one label space the product reports (ISIC 9-class, snake_case)."""

from enum import StrEnum


class LesionClass(StrEnum):
    ACTINIC_KERATOSIS = "actinic_keratosis"
    BASAL_CELL_CARCINOMA = "basal_cell_carcinoma"
    DERMATOFIBROMA = "dermatofibroma"
    MELANOMA = "melanoma"
    NEVUS = "nevus"
    PIGMENTED_BENIGN_KERATOSIS = "pigmented_benign_keratosis"
    SEBORRHEIC_KERATOSIS = "seborrheic_keratosis"
    SQUAMOUS_CELL_CARCINOMA = "squamous_cell_carcinoma"
    VASCULAR_LESION = "vascular_lesion"


#: Model output order. Never reorder: stored models depend on it.
CLASS_NAMES: tuple[str, ...] = tuple(c.value for c in LesionClass)

MELANOMA = LesionClass.MELANOMA.value

#: Position of melanoma in the model output.
MELANOMA_INDEX = CLASS_NAMES.index(MELANOMA)

#: Malignant or pre-malignant lesions other than melanoma: triaged "soon".
SOON_CLASSES: tuple[str, ...] = (
    LesionClass.BASAL_CELL_CARCINOMA.value,
    LesionClass.SQUAMOUS_CELL_CARCINOMA.value,
    LesionClass.ACTINIC_KERATOSIS.value,
)

#: Human-readable names for reports.
DISPLAY_NAMES: dict[str, str] = {
    "actinic_keratosis": "Actinic keratosis",
    "basal_cell_carcinoma": "Basal cell carcinoma",
    "dermatofibroma": "Dermatofibroma",
    "melanoma": "Melanoma",
    "nevus": "Melanocytic nevus",
    "pigmented_benign_keratosis": "Pigmented benign keratosis",
    "seborrheic_keratosis": "Seborrheic keratosis",
    "squamous_cell_carcinoma": "Squamous cell carcinoma",
    "vascular_lesion": "Vascular lesion",
}
