"""Result objects as DICOM: TID 1500 SR, binary SEG, Parametric Map (highdicom lives here)."""
