// client placeholder
