"""The data path of LoFi: annotations in the ActivityNet format, media found on disk,
and clips decoded from videos or frame folders.

    annotations.py  ActivityNet/HACS/THUMOS JSON -> AnnotationSet of VideoRecord
    media_source.py MediaSource (a file or frame folder), MediaInfo (what it says of itself)
    media.py        video id -> MediaSource; media vs annotations, probed up front
    clip_times.py   pure: which timestamps make TR snippets of F frames
    video.py        PyAV decoding -> (TR, F, 3, SR, SR) uint8; `read_clip`
    video_container.py  a video's container: opening, timing, packet index, seeking, timed frames
    frames.py       the same from a folder of JPEG frames
    transforms.py   short-side resize plan, centre/random crop, flip
    dataset.py      torch Dataset of ClipSample / SkippedSample and its collate
    video_writer.py frames -> H.264 mp4 (synthetic data and tests); synth/: `lofi data synth`
"""
