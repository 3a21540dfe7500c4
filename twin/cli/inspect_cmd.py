"""``twin inspect FOLDER``: list the series of a study and what is missing.

Reads headers only (fast). Patient-identifying attributes (name, ID, birth date, ...) are never
printed unless ``--show-identifiers`` is given.
"""

from __future__ import annotations


def register(subparsers):
    p = subparsers.add_parser(
        "inspect", help="list the DICOM/NIfTI series of a study folder and what is missing",
        description="List the CT, PET, SPECT series, contours and NIfTI volumes found under "
                    "FOLDER (grouped by modality and acquisition time), and what a twin still "
                    "needs. Patient identity is hidden unless --show-identifiers is given.")
    p.add_argument("folder", metavar="FOLDER", help="study folder (searched recursively)")
    p.add_argument("--show-identifiers", action="store_true",
                   help="also print patient name, ID and birth date (off by default)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from twin.imaging.study import describe_folder

    lines, missing = describe_folder(args.folder, show_identifiers=args.show_identifiers)
    print(f"study folder: {args.folder}")
    if not lines:
        print("  nothing readable found")
    for line in lines:
        print("  " + line)
    if missing:
        print("missing:")
        for m in missing:
            print("  - " + m)
    else:
        print("missing: nothing")
    return 0
